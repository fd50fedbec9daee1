"""Data modules (no Hydra): the seed's synthetic regression data, and a user's own from files."""

from __future__ import annotations

import csv
import hashlib
import itertools
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from twolayer_lightning.errors import DataError

log = logging.getLogger(__name__)


class SyntheticRegressionData(L.LightningDataModule):
    """``x ~ randn(N, D_in)`` and ``y ~ randn(N, D_out)``, served as one full batch per step.

    The tensors are drawn when the module is built, x first and then y, from ``generator``: build
    the data before the network from the same generator to follow the seed's draw order
    (x, y, w1, w2). The training loader repeats the full batch without end, as the seed's loop
    does; the Trainer's ``max_steps`` decides how many updates run.

    Args:
        num_samples: N, the rows of x and y (the seed's batch size, 64).
        in_features: D_in, the columns of x.
        out_features: D_out, the columns of y.
        generator: the random generator to draw from; the global one if None.
        dtype: dtype of x and y (the seed's ``torch.float``).

    Raises:
        ValueError: a size is not a positive integer.

    Example:
        >>> data = SyntheticRegressionData(64, 1000, 10, generator=torch.Generator().manual_seed(0))
        >>> x, y = next(iter(data.train_dataloader()))
        >>> tuple(x.shape), tuple(y.shape)
        ((64, 1000), (64, 10))
    """

    def __init__(
        self,
        num_samples: int = 64,
        in_features: int = 1000,
        out_features: int = 10,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        sizes = {"num_samples": num_samples, "in_features": in_features, "out_features": out_features}
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"SyntheticRegressionData: {name}={value!r} is not allowed; use a positive integer")
        self.x = torch.randn(num_samples, in_features, generator=generator, dtype=dtype)  # (N, D_in)
        self.y = torch.randn(num_samples, out_features, generator=generator, dtype=dtype)  # (N, D_out)

    def train_dataloader(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return _repeat_full_batch(self, self.x, self.y)

    def val_dataloader(self) -> list:
        """None: the seed's data is all training data (an empty list tells Lightning so, quietly)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: a fingerprint of the training data, so a resume can check it."""
        return {"train_data_sha256": _fingerprint(self.x, self.y)}

    def predict_dataloader(self) -> DataLoader:
        """x alone, as one batch."""
        return DataLoader(self.x, batch_size=len(self.x))


def _fingerprint(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _rank_and_world_size(datamodule: L.LightningDataModule) -> tuple[int, int]:
    trainer = datamodule.trainer
    return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)


class EpochBatches(Sampler[torch.Tensor]):
    """Mini-batches of row indices whose order is a function of the seed and the epoch alone.

    Epoch ``e`` permutes the rows with ``torch.randperm`` from a generator seeded with
    ``numpy.random.SeedSequence([seed, e])`` and cuts the permutation into batches (the last one
    may be short); ``shuffle=False`` keeps row order. Lightning calls :meth:`set_epoch` at the start
    of every epoch, so training sees the same batches however often the loader is iterated, and a
    run resumed from a checkpoint taken at the end of an epoch continues with the very batches the
    uninterrupted run takes. (A ``DataLoader(shuffle=True, generator=g)`` draws from one running
    generator instead, which each ``iter()`` advances: under the Trainer its second epoch already
    differs from iterating it by hand.)

    With ``world_size`` W > 1 (DDP), rank r takes the r-th of W contiguous blocks of every batch:
    together the ranks see the single-process batches.

    Args:
        num_rows: rows to draw from (indices ``0 .. num_rows - 1``).
        batch_size: rows per batch.
        shuffle: permute the rows every epoch; else keep their order.
        seed: with the epoch, seeds the permutation.
        rank: this process's rank (DDP).
        world_size: the number of processes (DDP).

    Example:
        >>> batches = EpochBatches(5, 2, shuffle=False, seed=0)
        >>> [b.tolist() for b in batches]
        [[0, 1], [2, 3], [4]]
        >>> shuffled = EpochBatches(5, 2, shuffle=True, seed=0)
        >>> first = [b.tolist() for b in shuffled]
        >>> shuffled.set_epoch(1)
        >>> first != [b.tolist() for b in shuffled]
        True
    """

    def __init__(
        self, num_rows: int, batch_size: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.num_rows, self.batch_size, self.shuffle, self.seed = num_rows, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration gives (Lightning calls this)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.shuffle:
            seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
            order = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(seed))
        else:
            order = torch.arange(self.num_rows)
        for batch in order.split(self.batch_size):
            yield batch.tensor_split(self.world_size)[self.rank] if self.world_size > 1 else batch

    def __len__(self) -> int:
        return math.ceil(self.num_rows / self.batch_size)


def _repeat_full_batch(
    datamodule: L.LightningDataModule, x: torch.Tensor, y: torch.Tensor
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The full batch, or this process's shard of it, for every step.

    Every step sees the same batch, so an endless repeat stands in for a DataLoader: no per-step
    indexing or collation, and no epoch boundary every step. With W processes (DDP), rank r takes
    the r-th of W fixed, contiguous row blocks; LitTwoLayerNet scales each rank's loss by W, so
    DDP's averaged gradient is the full batch's.
    """
    trainer = datamodule.trainer
    if trainer is not None:
        # Once, here: the same tensors every step, so Lightning's per-step transfer finds them in place.
        x, y = x.to(trainer.strategy.root_device), y.to(trainer.strategy.root_device)
    if trainer is not None and trainer.world_size > 1:
        if len(x) < trainer.world_size:
            raise ValueError(
                f"{len(x)} training rows cannot be shared by {trainer.world_size} processes; "
                "use at least one row per process (fewer trainer.devices)"
            )
        x = x.tensor_split(trainer.world_size)[trainer.global_rank]  # (about N / W, D_in)
        y = y.tensor_split(trainer.world_size)[trainer.global_rank]  # (about N / W, D_out)
    return itertools.repeat((x, y))


# --- A user's own regression data, from files --------------------------------------------------

SUFFIXES = (".npy", ".npz", ".pt", ".csv")


def load_regression_arrays(
    x_path: str | os.PathLike[str],
    y_path: str | os.PathLike[str] | None = None,
    target_columns: str | Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read inputs x and targets y for regression from ``.npy``, ``.npz``, ``.pt`` or ``.csv`` files.

    Either two files (``x_path`` and ``y_path``, each one array: a ``.npy``, an ``.npz`` with one
    array or arrays named ``x``/``y``, a ``.pt`` tensor or dict with ``x``/``y``, a CSV with a header
    row whose every column is used), or one file holding both: an ``.npz`` or ``.pt`` dict with
    ``x`` and ``y``, or a CSV whose ``target_columns`` are y (in the order given) and whose other
    columns are x (in file order).

    Args:
        x_path: the file of x, or of x and y together.
        y_path: the file of y; None when ``x_path`` holds both.
        target_columns: with one CSV, the names of its y columns (a single name is fine).

    Returns:
        ``(x, y)``, float32 tensors of shape ``(N, D_in)`` and ``(N, D_out)``, rows in file order;
        a 1-D array becomes one column.

    Raises:
        DataError: a file is missing, of an unsupported kind, unreadable, empty, not numeric,
            holds nan or inf, is not 1-D or 2-D, names no such target column, or x and y
            differ in rows.
    """
    x, y, _, _ = _load(x_path, y_path, target_columns)
    return x, y


def _load(
    x_path: str | os.PathLike[str],
    y_path: str | os.PathLike[str] | None,
    target_columns: str | Sequence[str] | None,
) -> tuple[torch.Tensor, torch.Tensor, list[str] | None, list[str] | None]:
    """:func:`load_regression_arrays`, plus the CSV column names of x and of y (None for other files)."""
    if isinstance(target_columns, str):
        target_columns = [target_columns]
    x_path = Path(x_path)
    if y_path is None:
        (x, x_where, x_row, x_names), (y, y_where, y_row, y_names) = _read_pair(x_path, target_columns)
    else:
        if target_columns:
            raise DataError(
                f"{x_path}: target_columns={list(target_columns)} was given with y_path={str(y_path)!r}; "
                "give y_path (two files) or target_columns (one CSV), not both"
            )
        x, x_where, x_row, x_names = _read_single(x_path, "x")
        y, y_where, y_row, y_names = _read_single(Path(y_path), "y")
    x = _checked_matrix(x, x_where, x_row, x_names)  # (N, D_in)
    y = _checked_matrix(y, y_where, y_row, y_names)  # (N, D_out)
    if len(x) != len(y):
        raise DataError(
            f"{x_where} has {len(x)} rows but {y_where} has {len(y)} rows; "
            "x and y need one row per sample, in the same order"
        )
    return x, y, x_names, y_names


def load_inputs(
    x_path: str | os.PathLike[str],
    x_columns: Sequence[str] | None = None,
    target_columns: Sequence[str] | None = None,
    columns_by_position: bool = False,
) -> torch.Tensor:
    """Read inputs x alone, for predictions on new rows that have no targets.

    A ``.npy``, a ``.pt`` tensor, or an ``.npz``/``.pt`` dict's ``x`` (or its only array); a CSV's
    ``x_columns`` in that order (the names the model was trained with, whatever ``columns_by_position``
    says). A model trained on arrays knows no names (``x_columns`` None), so a CSV's header cannot be
    matched to what it learnt: its columns are taken by position, in file order without the
    ``target_columns`` present in it, only with ``columns_by_position=True``; else the CSV is refused,
    since a reordered table would give wrong predictions without a word.

    Raises:
        DataError: the file cannot be used, a CSV lacks one of ``x_columns``, or a CSV meets a model
            that knows no column names without ``columns_by_position``.
    """
    path = Path(x_path)
    content = _open(path, "x")
    if isinstance(content, _CsvTable):
        if x_columns:
            missing = [name for name in x_columns if name not in content.header]
            if missing:
                raise DataError(
                    f"{path}: no column named {', '.join(map(repr, missing))}; the model was trained on columns "
                    f"{', '.join(x_columns)} (the file has {', '.join(content.header)}); give a CSV with them"
                )
            cols = [content.header.index(name) for name in x_columns]
        elif not columns_by_position:
            raise DataError(
                f"{path}: the model was trained on arrays, without column names, so this CSV's columns "
                f"({', '.join(content.header)}) cannot be matched by name; set data.columns_by_position=true to take "
                "them by position (in file order), or give x as .npy, .npz or .pt"
            )
        else:
            cols = [j for j, name in enumerate(content.header) if name not in (target_columns or ())]
        names = [content.header[j] for j in cols]
        return _checked_matrix(content.values[:, cols], str(path), content.row, names)
    value, where, row, names = _read_single(path, "x")
    return _checked_matrix(value, where, row, names)


def check_split(val_fraction: float, num_rows: int) -> str | None:
    """Why ``val_fraction`` of ``num_rows`` rows is no usable split (with a value that works), or None.

    Validation needs at least 2 rows (R2 and explained variance need two) and training at least one.
    """
    num_val = math.ceil(val_fraction * num_rows)  # as FileRegressionData splits
    if num_val == 0 or 2 <= num_val < num_rows:
        return None
    works = [v / 1000 for v in range(1, 1000) if 2 <= math.ceil(v / 1000 * num_rows) < num_rows]
    if num_val >= num_rows:
        problem = f"val_fraction={val_fraction!r} of {num_rows} rows leaves no training row"
        fix = f"use at most {works[-1]:g}" if works else ""
    else:
        problem = (
            f"val_fraction={val_fraction!r} of {num_rows} rows holds out 1 row, and R2 and explained variance "
            "need at least 2"
        )
        fix = f"use at least {works[0]:g}" if works else ""
    if not works:
        return f"{problem}; {num_rows} rows are too few for 2 validation rows and 1 training row: use 0 (no validation)"
    return f"{problem}; {fix} (or 0: no validation)"


def fold_indices(num_rows: int, folds: int, split_seed: int = 0) -> list[torch.Tensor]:
    """The rows of each of ``folds`` folds (k-fold cross-validation), each fold's in file order.

    One seeded permutation of the rows (``torch.randperm`` from a generator seeded with
    ``split_seed``) is cut into ``folds`` contiguous parts, so every row is in exactly one fold and
    fold sizes differ by at most one (the first ``num_rows % folds`` folds get the extra row). The
    folds depend on ``num_rows``, ``folds`` and ``split_seed`` alone: the runs of fold 0, 1, ...
    cut the same folds, so together they validate every row once.

    Example:
        >>> [fold.tolist() for fold in fold_indices(7, 3, split_seed=0)]
        [[0, 4, 5], [2, 3], [1, 6]]
    """
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(split_seed))
    return [part.sort().values for part in order.tensor_split(folds)]


def check_folds(folds: int, num_rows: int) -> str | None:
    """Why ``folds`` folds of ``num_rows`` rows are no usable cross-validation (with a value that works), or None.

    Every fold needs at least 2 rows (it is some run's validation rows, and R2 and explained
    variance need two), so every fold's run also keeps at least 2 training rows.
    """
    if num_rows // folds >= 2:
        return None
    if num_rows < 4:
        fix = f"{num_rows} rows are too few for cross-validation (2 folds of at least 2 rows)"
    else:
        fix = f"use at most {num_rows // 2} folds"
    if folds > num_rows:
        return f"folds={folds} is more than the {num_rows} rows, so some fold would have no row; {fix}"
    small = folds - num_rows % folds  # the folds that get num_rows // folds rows
    return (
        f"folds={folds} of {num_rows} rows gives {small} of the folds 1 validation row, and R2 and explained "
        f"variance need at least 2; {fix}"
    )


def _split_rows(
    num_rows: int, val_fraction: float, folds: int | None, fold: int | None, split_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation rows and the training rows (each in file order) of :class:`FileRegressionData`.

    Raises:
        ValueError: the split or the folds do not fit ``num_rows``, or the arguments do not go together.
    """
    if folds is None:
        if fold is not None:
            raise ValueError(f"FileRegressionData: fold={fold!r} is not allowed without folds: give folds=K too")
        problem = check_split(val_fraction, num_rows)
        if problem:
            raise ValueError(f"FileRegressionData: {problem}")
        num_val = math.ceil(val_fraction * num_rows)  # ceil: any val_fraction > 0 holds out at least one row
        order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(split_seed))
        return order[:num_val].sort().values, order[num_val:].sort().values
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"FileRegressionData: folds={folds!r} is not allowed; use a whole number >= 2, or None")
    if val_fraction:
        raise ValueError(
            f"FileRegressionData: folds={folds} is not allowed with val_fraction={val_fraction!r}: fold i is the "
            "validation rows; use one or the other"
        )
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise ValueError(
            f"FileRegressionData: fold={fold!r} is not allowed with folds={folds}: use a whole number from 0 to "
            f"{folds - 1} (the fold validated on)"
        )
    problem = check_folds(folds, num_rows)
    if problem:
        raise ValueError(f"FileRegressionData: {problem}")
    parts = fold_indices(num_rows, folds, split_seed)
    return parts[fold], torch.cat(parts[:fold] + parts[fold + 1 :]).sort().values


class FileRegressionData(L.LightningDataModule):
    """A user's x and y, split into training and validation rows, served whole or in mini-batches.

    The split is seeded: ``ceil(val_fraction * N)`` rows drawn by ``torch.randperm`` from a generator
    seeded with ``split_seed`` go to validation, the others to training; each part keeps file order.
    Or, for one run of k-fold cross-validation, ``folds=K`` and ``fold=i``: the rows are cut into K
    seeded folds (:func:`fold_indices`), fold i is validated on and the other K-1 are trained on. With
    ``batch_size=None`` every training step sees the whole training set, as the seed's loop does;
    otherwise a DataLoader serves mini-batches, reshuffled each epoch as :class:`EpochBatches`
    says: epoch e's batches depend on ``seed`` and e alone, so a given seed gives the same batches
    in every run, and a resume from the end of an epoch continues with the same batches.

    Args:
        x: inputs, ``(N, D_in)``.
        y: targets, ``(N, D_out)``, one row per row of x.
        val_fraction: the share of rows held out for validation, in [0, 1).
        batch_size: rows per training step; None: all training rows every step.
        shuffle: reshuffle mini-batches every epoch (ignored with ``batch_size=None``).
        seed: seeds the shuffling (and the split, unless ``split_seed`` is given).
        standardize: centre and scale x and y with the mean and standard deviation of the training
            rows (a constant column gets scale 1). Training batches are then standardized (once,
            here); validation and prediction rows stay in the data's units, and :attr:`scaling`
            holds the statistics, which ``LitTwoLayerNet`` takes into its network so that its
            predictions and metrics are in the data's units.
        split_seed: seeds the split (or the folds); None: ``seed``.
        folds: K >= 2, the number of folds to cut the rows into; None: no folds (``val_fraction`` splits).
        fold: with ``folds``, the fold validated on, ``0 <= fold < folds``.

    Raises:
        ValueError: x or y is not a 2-D tensor, their rows differ, an argument is out of range, or
            ``folds`` comes with ``val_fraction`` or without ``fold``.

    Example:
        >>> x = torch.arange(12.0).reshape(6, 2)
        >>> data = FileRegressionData(x, x.sum(1, keepdim=True), val_fraction=0.3, batch_size=2, seed=0)
        >>> data.num_samples, data.in_features, data.out_features
        (6, 2, 1)
        >>> len(data.train_indices), len(data.val_indices)
        (4, 2)
        >>> [tuple(xb.shape) for xb, yb in data.train_dataloader()]
        [(2, 2), (2, 2)]
        >>> fold_1 = FileRegressionData(x, x.sum(1, keepdim=True), folds=3, fold=1, split_seed=0)
        >>> fold_1.val_indices.tolist(), fold_1.train_indices.tolist()
        ([0, 3], [1, 2, 4, 5])
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        val_fraction: float = 0.0,
        batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        standardize: bool = False,
        split_seed: int | None = None,
        folds: int | None = None,
        fold: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("x", x), ("y", y)):
            if not isinstance(value, torch.Tensor) or value.dim() != 2 or value.numel() == 0:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(
                    f"FileRegressionData: {name} of shape {shape} is not allowed; give a non-empty 2-D tensor "
                    f"(rows, columns), e.g. {name}.reshape(len({name}), -1)"
                )
        if len(x) != len(y):
            raise ValueError(f"FileRegressionData: x has {len(x)} rows but y has {len(y)}; give one y row per x row")
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
            raise ValueError(
                f"FileRegressionData: val_fraction={val_fraction!r} is not allowed; use a number in [0, 1)"
            )
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0
        ):
            raise ValueError(
                f"FileRegressionData: batch_size={batch_size!r} is not allowed; use an integer >= 1, "
                "or None for the whole training set each step"
            )
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.standardize = standardize
        self.split_seed = seed if split_seed is None else split_seed
        self.folds, self.fold = folds, fold
        self.x_names: list[str] | None = None  # the CSV's column names of x and y, when read from a CSV
        self.y_names: list[str] | None = None
        # The file rows validated on and trained on, each in file order (val_fraction=0 trains on x itself).
        self.val_indices, self.train_indices = _split_rows(len(x), val_fraction, folds, fold, self.split_seed)
        x_train, y_train = x[self.train_indices], y[self.train_indices]  # (N_train, D_in), (N_train, D_out)
        # (x_mean, x_scale, y_mean, y_scale) of the training rows, or None without standardize.
        self.scaling: tuple[torch.Tensor, ...] | None = None
        if standardize:
            self.scaling = (*_mean_and_scale(x_train), *_mean_and_scale(y_train))
            x_mean, x_scale, y_mean, y_scale = self.scaling
            x_train, y_train = (x_train - x_mean) / x_scale, (y_train - y_mean) / y_scale
        self._train = (x_train, y_train)  # what training sees
        self._val = (x[self.val_indices], y[self.val_indices])  # (N_val, D_in), (N_val, D_out), the data's units

    @classmethod
    def from_files(
        cls,
        x_path: str | os.PathLike[str],
        y_path: str | os.PathLike[str] | None = None,
        target_columns: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> FileRegressionData:
        """Read x and y with :func:`load_regression_arrays`; ``kwargs`` go to the constructor.

        Raises:
            DataError: a file cannot be used (see :func:`load_regression_arrays`).
        """
        x, y, x_names, y_names = _load(x_path, y_path, target_columns)
        data = cls(x, y, **kwargs)
        data.x_names, data.y_names = x_names, y_names
        return data

    def with_fold(self, fold: int) -> FileRegressionData:
        """The same rows and settings with fold ``fold`` validated on: one member of this cross-validation.

        Raises:
            ValueError: this data has no folds, or ``fold`` is not in ``0 .. folds - 1``.
        """
        if self.folds is None:
            raise ValueError(f"FileRegressionData.with_fold: fold={fold!r} needs data built with folds=K")
        data = type(self)(
            self.x,
            self.y,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            seed=self.seed,
            standardize=self.standardize,
            split_seed=self.split_seed,
            folds=self.folds,
            fold=fold,
        )
        data.x_names, data.y_names = self.x_names, self.y_names
        return data

    @property
    def training_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x and y of the training rows as training sees them (standardized with ``standardize``)."""
        return self._train

    @property
    def num_samples(self) -> int:
        """N, all rows (training and validation)."""
        return self.x.shape[0]

    @property
    def in_features(self) -> int:
        """D_in, the columns of x: the model's ``in_features``."""
        return self.x.shape[1]

    @property
    def out_features(self) -> int:
        """D_out, the columns of y: the model's ``out_features``."""
        return self.y.shape[1]

    def train_dataloader(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        if self.batch_size is None:
            return _repeat_full_batch(self, *self._train)
        rank, world_size = _rank_and_world_size(self)
        batches = EpochBatches(len(self.train_indices), self.batch_size, self.shuffle, self.seed, rank, world_size)
        train = self._train
        if self.trainer is not None:
            # On the device once: batches are gathered there, with no copy to it per step.
            train = tuple(t.to(self.trainer.strategy.root_device) for t in train)
        # batch_size=None: each batch of indices goes to the dataset at once, one gather per tensor
        # instead of a row-by-row fetch and torch.stack (benchmarks/README.md, Mini-batches).
        return DataLoader(TensorDataset(*train), sampler=batches, batch_size=None)

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: a fingerprint of the training rows, so a resume can check it."""
        return {"train_data_sha256": _fingerprint(*self._train)}

    def val_dataloader(self) -> DataLoader | list:
        if not len(self.val_indices):
            return []  # no validation rows: Lightning runs no validation
        # Several processes: each validates its own block of rows; the metrics add them up.
        rank, world_size = _rank_and_world_size(self)
        return self._batches(*(part.tensor_split(world_size)[rank] for part in self._val))

    def predict_dataloader(self) -> DataLoader:
        """x alone, all rows in file order, so that ``trainer.predict`` returns one prediction per row."""
        return self._batches(self.x)

    def _batches(self, *tensors: torch.Tensor) -> DataLoader:
        # A DataLoader even for one batch: Lightning reads a plain list or tuple as several loaders.
        dataset = TensorDataset(*tensors) if len(tensors) > 1 else tensors[0]
        return DataLoader(dataset, batch_size=self.batch_size or len(tensors[0]))


# A loaded array, where it came from (for messages), how to name its i-th row to the user, and its
# columns' names (a CSV's header; None for other files).
_Loaded = tuple[Any, str, Callable[[int], str], list[str] | None]


def _row(i: int) -> str:
    return f"row {i}"


def _open(path: Path, role: str) -> Any:
    """The file's content: an array, a tensor, a dict of either (``.npz``, ``.pt``) or a CSV table."""
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise DataError(f"{path}: the {role} file {what} (resolved to {path.resolve()}); check the path")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix or '(no suffix)'!r}; use one of {', '.join(SUFFIXES)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes); give a file with at least one row")
    if suffix == ".csv":
        return _read_csv(path)
    try:
        if suffix == ".pt":
            # weights_only: a data file must not be able to run code when it is loaded.
            content = torch.load(path, map_location="cpu", weights_only=True)
        elif suffix == ".npy":
            content = np.load(path, allow_pickle=False)  # no pickles, for the same reason
        else:
            with np.load(path, allow_pickle=False) as npz:  # read every array now, so the file is closed
                content = {name: npz[name] for name in npz.files}
    except Exception as err:  # numpy and torch raise many kinds for a corrupt or pickled file
        reason = _load_error_reason(err)
        raise DataError(
            f"{path}: cannot be read as a {suffix} file ({type(err).__name__}: {reason}); "
            f"write it with {'torch.save(tensor, path)' if suffix == '.pt' else 'numpy.save/numpy.savez'}"
        ) from None
    if not isinstance(content, (np.ndarray, torch.Tensor, dict)):
        raise DataError(f"{path}: holds a {type(content).__name__}; save an array, or a dict with arrays 'x' and 'y'")
    return content


def _load_error_reason(err: Exception) -> str:
    """The reason of a failed load on one line, without terminal colour codes or torch's advice to load
    with ``weights_only=False`` (which would run code from the file)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    # torch's weights-only refusal: the part after "WeightsUnpickler error:" names what was refused.
    refused = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\.\s+Please use|\n\n|$)", text, re.S)
    if refused:
        text = f"weights_only=True refused it: {refused.group(1)}; data files hold tensors and arrays only"
    return " ".join(text.split())


def _read_single(path: Path, role: str) -> _Loaded:
    content = _open(path, role)
    if isinstance(content, _CsvTable):
        return content.values, str(path), content.row, content.header
    if isinstance(content, (np.ndarray, torch.Tensor)):
        return content, str(path), _row, None
    names = list(content)
    if role in names:
        return _member(content, role, path), f"{path}[{role!r}]", _row, None
    if len(names) == 1:
        return _member(content, names[0], path), str(path), _row, None
    raise DataError(
        f"{path}: holds {len(names)} entries {names} and none is named {role!r}; "
        f"name the {role} array {role!r} or save a single array"
    )


def _read_pair(path: Path, target_columns: Sequence[str] | None) -> tuple[_Loaded, _Loaded]:
    content = _open(path, "data")
    if isinstance(content, _CsvTable):
        if not target_columns:
            raise DataError(
                f"{path}: one CSV holds x and y only with target_columns; its columns are "
                f"{', '.join(content.header)}; pass target_columns=[<y column names>] or give y_path"
            )
        unknown = [name for name in target_columns if name not in content.header]
        if unknown:
            raise DataError(
                f"{path}: no column named {', '.join(map(repr, unknown))}; "
                f"the columns are {', '.join(content.header)}; use these names in target_columns"
            )
        y_cols = [content.header.index(name) for name in target_columns]
        x_cols = [j for j in range(len(content.header)) if j not in y_cols]
        if not x_cols:
            raise DataError(f"{path}: target_columns={list(target_columns)} leaves no x column; keep at least one")
        return (
            (content.values[:, x_cols], str(path), content.row, [content.header[j] for j in x_cols]),
            (content.values[:, y_cols], f"{path} (target_columns)", content.row, list(target_columns)),
        )
    if target_columns:
        raise DataError(f"{path}: target_columns={list(target_columns)} applies to a .csv only; drop it")
    if isinstance(content, (np.ndarray, torch.Tensor)):
        raise DataError(
            f"{path}: holds one array of shape {tuple(content.shape)}; give y_path too, "
            "or save x and y together (numpy.savez(path, x=x, y=y) or torch.save({'x': x, 'y': y}, path))"
        )
    names = list(content)
    if "x" not in names or "y" not in names:
        raise DataError(f"{path}: holds entries {names}, not both 'x' and 'y'; name the arrays x and y, or give y_path")
    return (
        (_member(content, "x", path), f"{path}['x']", _row, None),
        (_member(content, "y", path), f"{path}['y']", _row, None),
    )


def _member(content: Any, name: str, path: Path) -> Any:
    value = content[name]
    if not isinstance(value, (np.ndarray, torch.Tensor)):
        raise DataError(f"{path}: entry {name!r} is a {type(value).__name__}, not an array; save a tensor or array")
    return value


class _CsvTable:
    """A CSV's header, its values (float64, one row per data line) and each row's line number."""

    def __init__(self, header: list[str], values: np.ndarray, lines: list[int]) -> None:
        self.header, self.values, self.lines = header, values, lines

    def row(self, i: int) -> str:
        return f"line {self.lines[i]}"


def _read_csv(path: Path) -> _CsvTable:
    rows: list[list[float]] = []
    lines: list[int] = []
    try:
        # utf-8-sig: a byte-order mark (Excel writes one) would otherwise stick to the first column name.
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            header = next((row for row in reader if any(cell.strip() for cell in row)), None)
            if header is None:
                raise DataError(f"{path}: the CSV has no header and no rows; give a header row, then data rows")
            header = [name.strip() for name in header]
            if all(_is_number(name) for name in header):
                raise DataError(
                    f"{path}: the first line {','.join(header)!r} is numbers, not column names; "
                    "add a header row naming the columns"
                )
            if len(set(header)) < len(header):
                repeated = sorted({name for name in header if header.count(name) > 1})
                raise DataError(f"{path}: the header repeats column names {repeated}; give each column its own name")
            for cells in reader:
                if not any(cell.strip() for cell in cells):
                    continue  # blank lines, e.g. at the end of the file
                if len(cells) != len(header):
                    raise DataError(
                        f"{path}: line {reader.line_num} has {len(cells)} cells but the header has "
                        f"{len(header)} columns; give every row one cell per column"
                    )
                values = []
                for name, cell in zip(header, cells, strict=True):
                    try:
                        values.append(float(cell))
                    except ValueError:
                        raise DataError(
                            f"{path}: line {reader.line_num}, column {name!r}: {cell!r} is not a number; "
                            "fix or remove that row (every cell must be a number)"
                        ) from None
                rows.append(values)
                lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot be read as a UTF-8 CSV ({err}); save it as CSV text") from None
    if not rows:
        raise DataError(f"{path}: the CSV has a header ({', '.join(header)}) but no data rows; add rows")
    return _CsvTable(header, np.array(rows, dtype=np.float64).reshape(len(rows), len(header)), lines)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _mean_and_scale(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each column's mean and standard deviation (over N, as scikit-learn's StandardScaler); 1 where it is 0."""
    mean, std = t.mean(dim=0), t.std(dim=0, correction=0)  # (D,), (D,)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def _checked_matrix(
    value: Any, where: str, row: Callable[[int], str], names: Sequence[str] | None = None
) -> torch.Tensor:
    """``value`` as a float32 ``(N, D)`` tensor with N, D > 0 and no nan or inf."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":  # bool, int, uint, float
            raise DataError(f"{where}: values of dtype {value.dtype} are not real numbers; save a numeric array")
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf: reported just below
            tensor = torch.from_numpy(value.astype(np.float32))
        original = torch.from_numpy(value.astype(np.float64)) if value.dtype.kind in "iuf" else None
    elif value.layout != torch.strided or value.is_quantized or value.device.type == "meta":
        raise DataError(
            f"{where}: a {'quantized' if value.is_quantized else ''}{value.layout} tensor on {value.device} "
            "cannot be used; save a dense tensor with its values (e.g. t.to_dense(), t.dequantize())"
        )
    elif value.is_complex():
        raise DataError(f"{where}: values of dtype {value.dtype} are not real numbers; save a real tensor")
    else:
        tensor = value.detach().to("cpu", torch.float32)
        original = value.detach().to("cpu", torch.float64) if value.dtype != torch.bool else None
    if original is not None:
        _warn_if_integers_changed(original, tensor, where, names)
    if tensor.dim() == 0:
        raise DataError(f"{where}: holds a single number, not rows; save one row per sample")
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(1)  # (N,) -> (N, 1): one feature or one target per row
    if tensor.dim() > 2:
        raise DataError(
            f"{where}: has {tensor.dim()} dimensions, shape {tuple(tensor.shape)}; give (rows, columns), "
            "e.g. a.reshape(len(a), -1)"
        )
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise DataError(f"{where}: has shape {tuple(tensor.shape)}, no rows or no columns; give at least one of each")
    # Checked after the cast: a float64 value beyond float32's range becomes inf here.
    bad = ~torch.isfinite(tensor)
    if bad.any():
        first = int(bad.any(dim=1).nonzero()[0])
        raise DataError(
            f"{where}: {int(bad.sum())} nan or inf values (as float32), the first in {row(first)}; "
            "remove or fill those rows"
        )
    return tensor.contiguous()


def _warn_if_integers_changed(
    original: torch.Tensor, cast: torch.Tensor, where: str, names: Sequence[str] | None
) -> None:
    """Warn once when the float32 cast changed a whole number (float32 holds them exactly up to 2**24)."""
    if original.dim() == 0 or original.numel() == 0:
        return
    columns = original.reshape(len(original), -1) if original.dim() > 1 else original.unsqueeze(1)
    with np.errstate(invalid="ignore"):
        changed = (columns == columns.round()) & (cast.reshape(columns.shape).double() != columns)  # (N, D)
    changed &= torch.isfinite(columns)
    if not changed.any():
        return
    j = int(changed.any(dim=0).nonzero()[0])
    i = int(changed[:, j].nonzero()[0])
    column = repr(names[j]) if names and j < len(names) else str(j)
    log.warning(
        "%s: float32 changes whole numbers in %d column(s), first in column %s (%r becomes %r); float32 holds "
        "whole numbers exactly only up to 2**24 = 16777216: subtract an offset or rescale that column",
        where,
        int(changed.any(dim=0).sum()),
        column,
        columns[i, j].item(),
        cast.reshape(columns.shape)[i, j].item(),
    )
