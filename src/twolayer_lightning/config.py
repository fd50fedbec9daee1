"""Typed schemas behind ``conf/config.yaml`` and the value checks Hydra's types cannot express.

Hydra validates names and types against these dataclasses (a typo or ``optim.lr=abc`` fails
there, naming the key); :func:`validate` then checks ranges and choices and reports every
problem at once, one line each.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from twolayer_lightning.errors import ConfigError
from twolayer_lightning.updates import UPDATE_PATHS

ACCELERATORS = ("cpu", "gpu", "auto")
# Precisions the exact update can honour: the seed's float32, or float64 throughout.
PRECISIONS = ("32-true", "32", "64-true", "64")
LOGGERS = ("csv", "tensorboard", "none")
STRATEGIES = ("auto", "ddp")


DATA_KINDS = ("synthetic", "files")
MODES = ("train", "validate", "predict")


@dataclass
class DataConfig:
    kind: str = "synthetic"  # synthetic (the seed's randn data) | files (data=files)
    num_samples: int = 64  # synthetic: N, rows of x and y
    x_path: str | None = None  # files: x, or x and y together (.npy .npz .pt .csv)
    y_path: str | None = None  # files: y; null when x_path holds both or target_columns names them
    target_columns: list[str] = field(default_factory=list)  # files, one CSV: the y columns
    val_fraction: float = 0.0  # files: share of rows held out for validation, [0, 1)
    batch_size: int | None = None  # files: rows per step; null: all training rows (the seed's full batch)
    shuffle: bool = True  # files: reshuffle mini-batches every epoch, seeded by `seed`
    standardize: bool = False  # files: centre and scale x and y with the training rows' mean and std
    split_seed: int = 0  # files: draws the validation rows or the folds (`seed` draws weights and batch order)
    folds: int | None = None  # files: K >= 2, cut the rows into K seeded folds (k-fold CV); null: no folds
    fold: int | None = None  # files, with folds: the fold i validated on, 0 <= i < K; the other K-1 are trained on
    # files, mode=predict on a CSV with a model trained on arrays (it knows no column names): take the
    # CSV's columns by position, in file order; false refuses such a CSV. A model that knows its names
    # matches them by name whatever this says.
    columns_by_position: bool = False


@dataclass
class ModelConfig:
    in_features: int | None = 1000  # D_in; null: read from the data (data=files)
    hidden_features: int = 100  # H
    out_features: int | None = 10  # D_out; null: read from the data (data=files)
    activation: str = "clamp"  # clamp | function (the custom autograd Function)
    init: str = "seed"  # seed: randn (std 1) | scaled: randn / sqrt(fan_in)


@dataclass
class OptimConfig:
    # Any: a number, or the string "auto" (a range test picks it); validate() checks which.
    lr: Any = 1e-6  # learning rate of the in-place SGD update, or auto


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"  # cpu | gpu | auto
    devices: Any = 1  # number of devices, or "auto"
    max_steps: int = 500  # number of updates
    log_every_n_steps: int = 50  # console line and logger flush every this many steps
    strategy: str = "auto"  # auto | ddp
    num_nodes: int = 1  # machines taking part (ddp)
    precision: str = "32-true"  # 32-true | 64-true; mixed precisions are refused
    enable_progress_bar: bool | None = None  # Lightning's progress bar; None: only when stdout is a terminal
    updates_per_step: int | None = None  # updates per Lightning training step; null: as many as the intervals allow
    update_path: str = "auto"  # auto | handwritten | direct | lightning (every per-update hook; DDP) | cuda_graph
    checkpoint_every_n_steps: int = 0  # also save checkpoints/step-N.ckpt every N updates; 0: only last.ckpt
    keep_checkpoints: int = 0  # keep the newest N step-N.ckpt files; 0: keep them all
    val_every_n_steps: int = 50  # validate every this many training steps (when there is validation data)


@dataclass
class Config:
    mode: str = "train"  # train | validate | predict (the last two need ckpt_path)
    seed: int = 0  # seeds the generator that draws x, y, w1, w2 in that order
    output_dir: str = "${hydra:runtime.output_dir}"  # where the run writes its files
    logger: str = "csv"  # csv | tensorboard | none
    ckpt_path: str | None = None  # resume from this checkpoint (a last.ckpt or step-N.ckpt); last: the run dir's newest
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def updates_per_step(cfg: Any) -> int:
    """``trainer.updates_per_step``, or when it is null the most that changes nothing a user sees.

    Several updates per training step only make sense when every step fetches the same full
    batch; then the number is the largest that divides every interval that Lightning checks once
    per training step (``log_every_n_steps``, ``checkpoint_every_n_steps``, ``val_every_n_steps``
    when there is validation data), so each still fires at exactly its step. Mini-batches and DDP
    get 1: one update per fetched batch, and so does anything with more than one process (or
    ``devices=auto`` on a GPU, where the count depends on the machine).

    Example:
        >>> from omegaconf import OmegaConf
        >>> updates_per_step(OmegaConf.structured(Config))  # log_every_n_steps=50, nothing else
        50
    """
    trainer, data = cfg.trainer, cfg.data
    if trainer.updates_per_step is not None:
        return trainer.updates_per_step
    if trainer.strategy == "ddp" or _processes(cfg) != 1 or (data.kind == "files" and data.batch_size is not None):
        return 1
    intervals = [trainer.log_every_n_steps, trainer.checkpoint_every_n_steps]
    if has_validation_rows(cfg):
        intervals.append(trainer.val_every_n_steps)
    return reduce(math.gcd, [n for n in intervals if n > 0])


def has_validation_rows(cfg: Any) -> bool:
    """Whether the run validates: ``data=files`` with ``data.val_fraction > 0`` or with ``data.folds``."""
    data = cfg.data
    return data.kind == "files" and (bool(data.val_fraction) or data.get("folds") is not None)


def _processes(cfg: Any) -> int | None:
    """How many processes the Trainer will start (devices x nodes); None when that depends on the machine."""
    devices, nodes = cfg.trainer.devices, cfg.trainer.num_nodes
    if devices == "auto" and cfg.trainer.accelerator == "cpu":
        devices = 1  # Lightning's CPU accelerator counts one device
    return devices * nodes if isinstance(devices, int) and isinstance(nodes, int) else None


def register_configs() -> None:
    """Register the schema as ``schema`` in Hydra's ConfigStore (``conf/config.yaml`` extends it)."""
    ConfigStore.instance().store(name="schema", node=Config)


def unknown_keys(cfg: Any) -> list[str]:
    """One line for each key of ``cfg`` that the schema does not have, naming the keys it has there.

    The typed schema refuses a misspelt ``key=value``, but Hydra adds ``+key=value`` and
    ``++key=value`` past it (that is what ``+`` is for). Nothing here reads such a key: the Trainer is
    built from the ``trainer.*`` keys of :class:`TrainerConfig` alone, because Lightning flags such as
    ``fast_dev_run``, ``limit_train_batches`` or ``precision`` would change what a step is or make
    the run inexact while ``metrics.json`` says otherwise. So an added key is refused, not ignored.

    Example:
        >>> from omegaconf import OmegaConf
        >>> cfg = OmegaConf.structured(Config)
        >>> OmegaConf.update(cfg, "trainer.fast_dev_run", True, force_add=True)  # as +trainer.fast_dev_run=true
        >>> [line.split(" is ")[0] for line in unknown_keys(cfg)]
        ['+trainer.fast_dev_run']
    """

    def walk(node: dict[str, Any], schema: dict[str, Any], prefix: str) -> list[str]:
        problems = []
        for key, value in node.items():
            if key not in schema:
                known = ", ".join(f"{prefix}{name}" for name in schema)
                hint = "; for a short run use trainer.max_steps=N" if prefix == "trainer." else ""
                problems.append(
                    f"+{prefix}{key} is not a key of this project's config, and nothing would read it: remove it; "
                    f"the keys here are {known}{hint}"
                )
            elif isinstance(value, dict) and isinstance(schema[key], dict):
                problems += walk(value, schema[key], f"{prefix}{key}.")
        return problems

    if not isinstance(cfg, DictConfig):
        return []
    # Unresolved: ${hydra:...} interpolations have no value outside a Hydra app.
    container = OmegaConf.to_container(cfg)
    container.pop("hydra", None)  # Hydra's own node, beside ours in the config its callbacks get
    return walk(container, _schema_keys(), "")


@functools.cache
def _schema_keys() -> dict[str, Any]:
    """The schema's keys and defaults as nested dicts (read only), built once."""
    return OmegaConf.to_container(OmegaConf.structured(Config))


def validate(cfg: Any, cuda_available: bool | None = None) -> None:
    """Check ranges and choices of a composed config, reporting every problem at once.

    Args:
        cfg: the composed config (a DictConfig of :class:`Config`).
        cuda_available: whether CUDA can be used; asks torch when None.

    Raises:
        ConfigError: one line per problem, each naming the key, the value and what is allowed.
    """
    problems: list[str] = unknown_keys(cfg)
    for check in (_check_run, _check_data, _check_model, _check_steps, _check_processes, _check_update_path):
        check(cfg, problems)
    _check_device(cfg, problems, cuda_available)
    if problems:
        raise ConfigError(problems)


def _positive_int(problems: list[str], key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        problems.append(f"{key}={value!r} is not allowed: use a whole number > 0")


def _choice(problems: list[str], key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        problems.append(f"{key}={value!r} is not allowed: use one of {', '.join(allowed)}")


def _check_run(cfg: Any, problems: list[str]) -> None:
    """``seed``, ``mode``, ``ckpt_path`` and ``logger``."""
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        problems.append(f"seed={cfg.seed!r} is not allowed: use a whole number >= 0")
    _choice(problems, "mode", cfg.mode, MODES)
    if cfg.mode != "train" and cfg.ckpt_path is None:
        problems.append(
            f"mode={cfg.mode!r} needs a checkpoint: add ckpt_path=<run dir>/last.ckpt (or checkpoints/best.ckpt)"
        )
    if cfg.ckpt_path not in (None, "last") and not Path(cfg.ckpt_path).is_file():
        problems.append(f"ckpt_path={cfg.ckpt_path!r} is not a file: give the path of a .ckpt written by a run")
    _choice(problems, "logger", cfg.logger, LOGGERS)
    if cfg.logger == "tensorboard" and not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        problems.append(
            "logger='tensorboard' needs the tensorboard package: pip install 'twolayer-lightning[tensorboard]', "
            "or use logger=csv"
        )


def _check_data(cfg: Any, problems: list[str]) -> None:
    """The ``data.*`` keys, and the model sizes synthetic data needs."""
    data = cfg.data
    _choice(problems, "data.kind", data.kind, DATA_KINDS)
    if data.kind == "synthetic":
        _positive_int(problems, "data.num_samples", data.num_samples)
        for key in ("in_features", "out_features"):
            if cfg.model[key] is None:
                problems.append(f"model.{key}=None is not allowed with synthetic data: use a whole number > 0")
    if data.kind == "files" and data.x_path is None:
        problems.append("data.x_path=None is not allowed with data=files: give data.x_path=<file> (.npy .npz .pt .csv)")
    if not isinstance(data.val_fraction, (int, float)) or not 0 <= data.val_fraction < 1:
        problems.append(f"data.val_fraction={data.val_fraction!r} is not allowed: use a number in [0, 1)")
    if data.batch_size is not None:
        _positive_int(problems, "data.batch_size", data.batch_size)
    if data.kind == "synthetic" and data.get("standardize"):
        problems.append(
            "data.standardize=true is not allowed with synthetic data: the seed's data is used as drawn; "
            "use data=files for your own data"
        )
    by_position = data.get("columns_by_position", False)
    if not isinstance(by_position, bool):
        problems.append(f"data.columns_by_position={by_position!r} is not allowed: use true or false")
    elif by_position and (cfg.mode != "predict" or data.kind != "files"):
        problems.append(
            f"data.columns_by_position=true is not allowed with mode={cfg.mode!r} and data.kind={data.kind!r}: it "
            "only applies to mode=predict with data=files (a CSV for a model trained on arrays); drop it"
        )
    split_seed = data.get("split_seed", 0)
    if isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0:
        problems.append(f"data.split_seed={split_seed!r} is not allowed: use a whole number >= 0")
    _check_folds(cfg, problems)


def _check_folds(cfg: Any, problems: list[str]) -> None:
    """``data.folds`` and ``data.fold``, one fold's run of a k-fold cross-validation (make_data checks the rows)."""
    data = cfg.data
    folds, fold = data.get("folds"), data.get("fold")
    if folds is None:
        if fold is not None:
            problems.append(f"data.fold={fold!r} is not allowed without data.folds: add data.folds=K (K >= 2 folds)")
        return
    if data.kind != "files":
        problems.append(
            f"data.folds={folds!r} is not allowed with {data.kind} data: folds split a user's rows; use data=files"
        )
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        problems.append(f"data.folds={folds!r} is not allowed: use a whole number >= 2, or null (no folds)")
        return
    if data.val_fraction:
        problems.append(
            f"data.folds={folds} is not allowed with data.val_fraction={data.val_fraction!r}: with data.folds, the "
            "fold data.fold is the validation rows; use one or the other (data.val_fraction=0, or drop data.folds)"
        )
    # NOT YET, the whole cross-validation: data.folds without data.fold would run all K folds in one
    # command (issue 21's stacked CV fit). Until then it is refused here, and only here.
    if fold is None:
        problems.append(
            f"data.folds={folds} without data.fold is not there yet: a whole cross-validation (all folds in one run) "
            f"is to come; run each fold on its own with data.fold=i for i in 0..{folds - 1}"
        )
    elif isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        problems.append(
            f"data.fold={fold!r} is not allowed with data.folds={folds}: use a whole number from 0 to {folds - 1}"
        )


def _check_model(cfg: Any, problems: list[str]) -> None:
    """The ``model.*`` keys and ``optim.lr``."""
    for key in ("in_features", "out_features"):
        if cfg.model[key] is not None:
            _positive_int(problems, f"model.{key}", cfg.model[key])
    _positive_int(problems, "model.hidden_features", cfg.model.hidden_features)
    _choice(problems, "model.activation", cfg.model.activation, ("clamp", "function"))
    _choice(problems, "model.init", cfg.model.init, ("seed", "scaled"))
    lr = cfg.optim.lr
    if lr != "auto" and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0):
        shown = float(lr) if isinstance(lr, int) and not isinstance(lr, bool) else lr  # 0 reads as 0.0, as typed
        problems.append(
            f"optim.lr={shown!r} is not allowed: use a finite number > 0 (the seed uses 1e-6), or auto (a range test "
            "on the training rows picks it)"
        )


def _check_steps(cfg: Any, problems: list[str]) -> None:
    """The step counts and intervals, and how they fit ``trainer.updates_per_step``."""
    data = cfg.data
    _positive_int(problems, "trainer.max_steps", cfg.trainer.max_steps)
    _positive_int(problems, "trainer.log_every_n_steps", cfg.trainer.log_every_n_steps)
    if cfg.trainer.updates_per_step is not None:
        _positive_int(problems, "trainer.updates_per_step", cfg.trainer.updates_per_step)
    _positive_int(problems, "trainer.val_every_n_steps", cfg.trainer.val_every_n_steps)
    ups = cfg.trainer.updates_per_step
    if isinstance(ups, int) and ups > 1 and data.kind == "files" and data.batch_size is not None:
        problems.append(
            f"trainer.updates_per_step={ups} is not allowed with data.batch_size={data.batch_size}: each "
            f"mini-batch would get {ups} updates instead of one; use trainer.updates_per_step=1 (or leave it "
            "unset), or data.batch_size=null for full-batch training"
        )
    if isinstance(ups, int) and ups > 1:
        # Lightning looks at these intervals once per training step, i.e. every `ups` updates.
        intervals = ["checkpoint_every_n_steps"]
        if has_validation_rows(cfg):
            intervals.append("val_every_n_steps")
        for key in intervals:
            value = cfg.trainer[key]
            if isinstance(value, int) and value > 0 and value % ups:
                problems.append(
                    f"trainer.{key}={value} is not allowed with trainer.updates_per_step={ups}: use a multiple "
                    f"of {ups}, or it would fire at other steps than it says"
                )
    every = cfg.trainer.checkpoint_every_n_steps
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        problems.append(f"trainer.checkpoint_every_n_steps={every!r} is not allowed: use a whole number >= 0")
    keep = cfg.trainer.keep_checkpoints
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        problems.append(f"trainer.keep_checkpoints={keep!r} is not allowed: use a whole number >= 0 (0 keeps all)")


def _check_processes(cfg: Any, problems: list[str]) -> None:
    """``trainer.devices``, ``num_nodes`` and ``strategy``."""
    data = cfg.data
    devices = cfg.trainer.devices
    if devices != "auto":
        _positive_int(problems, "trainer.devices", devices)
    _positive_int(problems, "trainer.num_nodes", cfg.trainer.num_nodes)
    _choice(problems, "trainer.strategy", cfg.trainer.strategy, STRATEGIES)
    processes = _processes(cfg) or 0
    if cfg.trainer.strategy == "ddp" and data.kind == "synthetic" and data.num_samples < processes:
        problems.append(
            f"data.num_samples={data.num_samples} is not allowed with {processes} DDP processes: each needs at "
            f"least one row; use data.num_samples >= {processes} or fewer trainer.devices"
        )
    if cfg.trainer.strategy == "ddp" and cfg.trainer.updates_per_step not in (1, None):
        problems.append(
            f"trainer.updates_per_step={cfg.trainer.updates_per_step!r} is not allowed with trainer.strategy=ddp: "
            "DDP syncs gradients once per forward of a training step; use trainer.updates_per_step=1"
        )


def _check_update_path(cfg: Any, problems: list[str]) -> None:
    """``trainer.update_path`` against the processes and batches it would run with."""
    data = cfg.data
    path = cfg.trainer.update_path
    _choice(problems, "trainer.update_path", path, UPDATE_PATHS)
    if cfg.trainer.strategy == "ddp" and path not in ("auto", "lightning"):
        problems.append(
            f"trainer.update_path={path!r} is not allowed with trainer.strategy=ddp: DDP syncs gradients in "
            "Lightning's backward; use trainer.update_path=lightning (trainer=ddp sets it)"
        )
    if path == "cuda_graph" and _processes(cfg) != 1:
        problems.append(
            f"trainer.update_path='cuda_graph' is not allowed with trainer.devices={cfg.trainer.devices!r} and "
            f"trainer.num_nodes={cfg.trainer.num_nodes!r}: the graph runs in one process; use trainer.devices=1, or "
            "trainer.update_path=direct"
        )
    if path == "cuda_graph" and data.kind == "files" and data.batch_size is not None:
        problems.append(
            f"trainer.update_path='cuda_graph' is not allowed with data.batch_size={data.batch_size}: the graph "
            "replays one fixed batch; use data.batch_size=null (full batch) or trainer.update_path=direct"
        )


def _check_device(cfg: Any, problems: list[str], cuda_available: bool | None) -> None:
    """``trainer.precision`` and ``trainer.accelerator`` (torch is asked about CUDA only when it matters)."""
    path = cfg.trainer.update_path
    if str(cfg.trainer.precision) not in PRECISIONS:
        problems.append(
            f"trainer.precision={cfg.trainer.precision!r} is not allowed: the exact update needs full "
            "precision; use 32-true (the seed's float32) or 64-true"
        )
    accelerator = cfg.trainer.accelerator
    _choice(problems, "trainer.accelerator", accelerator, ACCELERATORS)
    if accelerator in ("gpu", "auto") and cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if accelerator == "gpu" and not cuda_available:
        problems.append(
            "trainer.accelerator='gpu' is not available: this torch sees no CUDA device; "
            "use trainer.accelerator=cpu (or auto, which picks a GPU when there is one)"
        )
    if path == "cuda_graph" and (accelerator == "cpu" or (accelerator == "auto" and not cuda_available)):
        problems.append(
            f"trainer.update_path='cuda_graph' needs a GPU, and trainer.accelerator={accelerator!r} trains on the "
            "CPU here; use trainer.accelerator=gpu, or trainer.update_path=direct (the same arithmetic, no graph)"
        )
