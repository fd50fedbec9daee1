"""A run of the config: ``train(cfg)``, its set-up, and one short function per mode.

Set-up is shared (the run dir checked and locked, the checkpoint to start from, the data, the
Trainer); then :func:`train` runs the mode (train, validate or predict) and a training run ends
in :func:`twolayer_lightning.results.finish`, as every member of a stacked fit does. The
command line (:mod:`twolayer_lightning.cli`) composes the config and turns errors into lines.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import importlib.metadata
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from twolayer_lightning import results
from twolayer_lightning.checkpoints import AtomicCheckpointIO, StopOnSignal, newest_checkpoint, read_checkpoint
from twolayer_lightning.config import updates_per_step, validate
from twolayer_lightning.data import FileRegressionData, SyntheticRegressionData, load_inputs
from twolayer_lightning.errors import ConfigError, DataError, TrainingInterruptedError
from twolayer_lightning.model import TwoLayerNet
from twolayer_lightning.module import LitTwoLayerNet, UpdateProgressBar
from twolayer_lightning.optim import describe_search, log_progress, search_lr
from twolayer_lightning.rundir import (
    RunDirLock,
    check_run_dir,
    has_checkpoint,
    is_rank_zero,
    resume_hint,
    slurm_requeued,
)

log = logging.getLogger(__name__)

HELD_SIGNALS = (signal.SIGTERM, signal.SIGINT)

Data = SyntheticRegressionData | FileRegressionData


@contextlib.contextmanager
def isolated_global_state() -> Iterator[None]:
    """Run with exact float32 matmuls and leave no global state behind for the next job.

    TF32 matmuls (what "high" precision allows on Ampere and newer GPUs) change the default run's
    final loss by orders of magnitude, so training always runs at "highest". The global RNG (which
    the DataLoader machinery draws from) is forked so that jobs sharing one process in a multirun
    leave each other's random state alone.
    """
    precision = torch.get_float32_matmul_precision()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.set_float32_matmul_precision("highest")
            yield
    finally:
        torch.set_float32_matmul_precision(precision)


@contextlib.contextmanager
def signals_held() -> Iterator[list[int]]:
    """Record SIGTERM and SIGINT instead of acting on them; yields the list of those received.

    Used while a run's files are written, so that a signal cannot cut them short.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # only the main thread may set handlers (a joblib worker thread, say)
        return
    previous = {signum: signal.signal(signum, lambda s, _: received.append(s)) for signum in HELD_SIGNALS}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _SetUpInterrupted(Exception):
    """SIGTERM or SIGINT came while a run was set up, before its Trainer took the signals over."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _signals_stop_set_up() -> Iterator[None]:
    """SIGTERM and SIGINT end the set-up (reading data, the lr range test) at once, as :class:`_SetUpInterrupted`.

    Without this a SIGTERM there would end the process with no line and its lock left behind. It
    is left before a Trainer stage starts: Lightning's handlers take the signals over there, and
    would call a handler of this context's as well.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: Any) -> None:
        raise _SetUpInterrupted(signum)

    previous = {signum: signal.signal(signum, stop) for signum in HELD_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _set_up_interrupted(cfg: DictConfig, out: Path, signum: int, step: int) -> TrainingInterruptedError:
    """Record a run interrupted before its stage started (where its folder exists) and say what to do."""
    if out.is_dir() and is_rank_zero():
        record = {"status": "interrupted", "mode": cfg.mode, "signal": signal.Signals(signum).name}
        results.write_metrics(out, {**record, "global_step": step, "seed": cfg.seed})
    then = f"resume with `{resume_hint(out)}`" if has_checkpoint(out) else "nothing was trained: start it again"
    return TrainingInterruptedError(
        f"interrupted by {signal.Signals(signum).name} while the run was set up (reading the data, the lr range "
        f"test), before its first update; {then}",
        signum,
    )


def output_dir(cfg: DictConfig) -> Path:
    """``cfg.output_dir``, checked (rank 0) as a folder this run may write into.

    Raises:
        ConfigError: it cannot be resolved outside a Hydra app, or :func:`~twolayer_lightning.rundir.check_run_dir`
            refuses it.
    """
    try:
        path = Path(cfg.output_dir)
    except OmegaConfBaseException:
        raise ConfigError(
            [
                f"output_dir={OmegaConf.to_container(cfg)['output_dir']!r} cannot be resolved outside a Hydra "
                "app: pass output_dir=<folder> as an override"
            ]
        ) from None
    if is_rank_zero():
        check_run_dir(path, cfg.ckpt_path is not None or slurm_requeued(), cfg.mode)
    return path


def _resolve_ckpt_path(cfg: DictConfig, out: Path) -> str | None:
    """``ckpt_path``, with ``last`` (or a SLURM requeue's null) turned into the run dir's newest checkpoint."""
    wanted = cfg.ckpt_path
    if cfg.mode == "train" and slurm_requeued() and (wanted is None or newest_checkpoint(out) is not None):
        wanted = "last"  # Lightning's auto-requeue restarted this job: resume it from where it stopped
    if wanted != "last":
        return wanted
    if cfg.mode != "train":
        raise ConfigError(
            [f"ckpt_path=last is for resuming training; with mode={cfg.mode!r} give the checkpoint's path"]
        )
    newest = newest_checkpoint(out)
    if newest is None:
        if cfg.ckpt_path is None:
            return None  # a requeued job that had not saved anything yet starts afresh
        raise ConfigError(
            [
                f"ckpt_path=last found no complete checkpoint in output_dir={str(out)!r}; point hydra.run.dir (or "
                "output_dir) at the run to resume, or give ckpt_path=<file>"
            ]
        )
    log.info("ckpt_path=last: resuming from %s", newest)
    return str(newest)


def make_logger(kind: str, out: Path, resume_step: int | None = None) -> Any:
    """The run's Lightning logger for ``logger=kind`` (False for none); a resume keeps the CSV's earlier rows."""
    if kind == "csv":
        logger = L.pytorch.loggers.CSVLogger(out, name="", version="csv")
        if resume_step is not None and is_rank_zero():
            _keep_csv_history(logger, resume_step)
        return logger
    if kind == "tensorboard":
        return L.pytorch.loggers.TensorBoardLogger(out, name="", version="tensorboard")
    return False


def _keep_csv_history(logger: Any, resume_step: int) -> None:
    """Carry a resumed run's earlier rows (steps before ``resume_step``) into the new CSV.

    Lightning's CSVLogger deletes ``metrics.csv`` when it opens its folder. The rows from before
    the checkpoint are read first and written back at once; rows after it (a crashed run's last
    steps, which the resume computes again) are dropped, so every step appears once.
    """
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return
    with path.open(newline="") as file:
        rows = [row for row in csv.DictReader(file) if _step_of(row) < resume_step]
    writer = logger.experiment  # deletes the old file
    for row in rows:  # the cells as they were written: the same text comes back
        step = int(float(row.pop("step")))
        writer.log_metrics(row, step=step)
    writer.save()


def _step_of(row: dict[str, str]) -> float:
    """A CSV row's step; inf (dropped) for a row cut short by a kill during a write."""
    try:
        return float(row.get("step") or "inf")
    except ValueError:
        return math.inf


def make_data(cfg: DictConfig, generator: torch.Generator) -> Data:
    """The run's data module; synthetic data is drawn from ``generator`` (the seed's x, y).

    Raises:
        ConfigError: the split or the model's sizes do not fit the data.
        DataError: a data file cannot be used.
    """
    if cfg.data.kind == "synthetic":
        return SyntheticRegressionData(
            cfg.data.num_samples, cfg.model.in_features, cfg.model.out_features, generator=generator
        )
    try:
        data = FileRegressionData.from_files(
            cfg.data.x_path,
            cfg.data.y_path,
            list(cfg.data.target_columns) or None,
            val_fraction=cfg.data.val_fraction,
            batch_size=cfg.data.batch_size,
            shuffle=cfg.data.shuffle,
            seed=cfg.seed,
            standardize=cfg.data.standardize,
            split_seed=cfg.data.split_seed,
            folds=cfg.data.folds,
            fold=cfg.data.fold,
        )
    except DataError:
        raise
    except ValueError as err:  # a split the rows do not allow: the message starts with the key
        raise ConfigError([f"data.{str(err).removeprefix('FileRegressionData: ')}"]) from None
    problems = [
        f"model.{key}={cfg.model[key]} does not match the data: it has {actual} ({what}); leave model.{key} "
        "unset (data=files reads it from the data) or fix it"
        for key, actual, what in (
            ("in_features", data.in_features, "columns of x"),
            ("out_features", data.out_features, "columns of y"),
        )
        if cfg.model[key] is not None and cfg.model[key] != actual
    ]
    if problems:
        raise ConfigError(problems)
    return data


def _has_validation(data: Data) -> bool:
    return isinstance(data, FileRegressionData) and len(data.val_indices) > 0


def _checkpoint_callbacks(cfg: DictConfig, out: Path, validation: bool) -> list[L.Callback]:
    """``step-N.ckpt`` every ``trainer.checkpoint_every_n_steps`` updates, and ``best.ckpt`` by ``val_loss``."""
    callbacks: list[L.Callback] = []
    every = cfg.trainer.checkpoint_every_n_steps
    if every:
        keep = cfg.trainer.keep_checkpoints
        callbacks.append(
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=out / "checkpoints",
                filename="step-{step}",  # no "=": the path must pass as a Hydra override
                auto_insert_metric_name=False,
                every_n_train_steps=every,
                # The newest N: Lightning ranks checkpoints by the "step" it always offers to monitor.
                save_top_k=keep if keep else -1,
                monitor="step" if keep else None,
                mode="max",
            )
        )
    if validation and cfg.mode == "train":
        callbacks.append(
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=out / "checkpoints", filename="best", monitor="val_loss", mode="min"
            )
        )
    return callbacks


def make_trainer(
    cfg: DictConfig, out: Path, validation: bool, stopper: StopOnSignal, resume_step: int | None = None
) -> L.Trainer:
    """The run's Trainer, built from the ``trainer.*`` keys alone (see ``config.unknown_keys``)."""
    checkpoints = _checkpoint_callbacks(cfg, out, validation)
    # In a terminal, a bar; in a log file or CI, only the periodic `step t  loss` lines.
    progress_bar = cfg.trainer.enable_progress_bar
    if progress_bar is None:
        progress_bar = sys.stdout.isatty()
    bar = [UpdateProgressBar()] if progress_bar else []  # counts updates, as max_steps does, not training steps
    return L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        strategy=cfg.trainer.strategy,
        num_nodes=cfg.trainer.num_nodes,
        precision=cfg.trainer.precision,
        max_steps=cfg.trainer.max_steps,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        # The full-batch loader never ends an epoch: validation counts training steps instead.
        val_check_interval=cfg.trainer.val_every_n_steps // updates_per_step(cfg) if validation else None,
        check_val_every_n_epoch=None,
        limit_val_batches=None if validation else 0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the data modules shard rows across processes themselves
        enable_progress_bar=progress_bar,
        logger=make_logger(cfg.logger, out, resume_step),
        callbacks=[stopper, *checkpoints, *bar],
        plugins=[AtomicCheckpointIO()],  # every checkpoint written beside its final name, then renamed
        enable_checkpointing=bool(checkpoints),  # last.ckpt is saved at the end in any case
        enable_model_summary=False,
        default_root_dir=out,
    )


def run_until_signal(stopper: StopOnSignal, stage: Callable[[], Any]) -> int | None:
    """Run a Trainer stage; the signal that ended it after an update (see ``StopOnSignal``), or None."""
    try:
        stage()
    except SIGTERMException:
        # Lightning ended the fit at the end of a training step after SIGTERM (or Ctrl-C, which
        # StopOnSignal routes there); the module stopped its updates at the first one after it.
        return stopper.received or signal.SIGTERM
    # Several processes end the fit normally when all agree to stop on a signal (LitTwoLayerNet.request_stop).
    return stopper.stopped_together


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train (or validate, or predict with) the seed's network as the config says.

    With the default config this is the seed's section 三 script with ``torch.manual_seed(cfg.seed)``
    prepended, bit for bit: x, y, w1, w2 are drawn in that order from a generator seeded with
    ``cfg.seed``, and each of ``trainer.max_steps`` steps is the seed's update.

    Writes into ``cfg.output_dir``: ``metrics.json``, ``last.ckpt`` (the final state; ``checkpoints/best.ckpt``
    too when there is validation data) and the logger's files (every step's loss in
    ``csv/metrics.csv`` by default). ``mode=validate`` writes the validation metrics of
    ``ckpt_path``; ``mode=predict`` writes ``predictions.npy``, one row per row of x.

    Args:
        cfg: a config composed from ``conf/config.yaml`` (see :func:`twolayer_lightning.run` to compose one).

    Returns:
        The metrics written to ``metrics.json`` (see ``results.fit_metrics``), inf and nan as floats
        (null in the file, named under ``non_finite``).

    Raises:
        ConfigError: a value is out of range, the data does not fit the model, the checkpoint
            cannot be resumed, or the output dir holds a finished run or is in use; nothing has
            been written then.
        DataError: a data file cannot be used; nothing has been written then.
        TrainingDivergedError: the loss became inf or nan; ``metrics.json`` records it.
        TrainingInterruptedError: SIGTERM or SIGINT stopped the run after an update; ``last.ckpt``
            holds that update and ``metrics.json`` says ``interrupted`` (see ``results.run_status``).
        DiskFullError: the disk filled up; the checkpoints written before are intact.
    """
    validate(cfg)
    out = output_dir(cfg)
    # One run at a time in a run dir (the Hydra callback RunDirGuard may hold this lock already).
    lock = RunDirLock(out.absolute()) if is_rank_zero() else None
    if lock is not None:
        lock.acquire()
    checkpoint = None
    try:
        with _signals_stop_set_up():
            ckpt_path = _resolve_ckpt_path(cfg, out)
            checkpoint = read_checkpoint(ckpt_path) if ckpt_path is not None else None
        if cfg.mode == "predict" and cfg.data.kind == "files":
            return _predict_file(cfg, out, ckpt_path, checkpoint)
        run_mode = {"train": _fit, "validate": _validate, "predict": _predict}[cfg.mode]
        with isolated_global_state():
            # One generator draws x, y, w1, w2 in the seed's order: the data first, then the weights.
            generator = torch.Generator().manual_seed(cfg.seed)
            with _signals_stop_set_up():
                data = make_data(cfg, generator)
            return run_mode(cfg, out, data, generator, ckpt_path, checkpoint)
    except _SetUpInterrupted as err:
        step = int(checkpoint["global_step"]) if checkpoint is not None else 0
        raise _set_up_interrupted(cfg, out, err.signum, step) from None
    except OSError as err:
        raise results.disk_full(err, out) from err
    finally:
        if lock is not None:
            lock.release()


def _fit(
    cfg: DictConfig,
    out: Path,
    data: Data,
    generator: torch.Generator,
    ckpt_path: str | None,
    checkpoint: dict[str, Any] | None,
) -> dict[str, Any]:
    """``mode=train``: fit a new network (or resume ``checkpoint``), then :func:`results.finish`."""
    with _signals_stop_set_up():
        lr, lr_search = choose_lr(cfg, data, generator, checkpoint)
    resumed_from = None
    if checkpoint is not None:
        _check_resumable(cfg, data, ckpt_path, checkpoint, lr)
        # lr: the remaining updates run at optim.lr (see _check_resumable); the checkpoint's is kept here.
        resumed_from = {
            "ckpt_path": str(ckpt_path),
            "global_step": int(checkpoint["global_step"]),
            "lr": checkpoint["hyper_parameters"].get("lr"),
        }
    model = new_model(cfg, data, generator, lr)
    out.mkdir(parents=True, exist_ok=True)
    stopper = StopOnSignal(package_version())
    resume_step = resumed_from["global_step"] if resumed_from else None
    trainer = make_trainer(cfg, out, _has_validation(data), stopper, resume_step)
    started = time.perf_counter()
    # weights_only: a checkpoint holds tensors and scalars only, so no pickled code is run.
    signum = run_until_signal(
        stopper, lambda: trainer.fit(model, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    )
    end = results.RunEnd(cfg, out, model, data, trainer, time.perf_counter() - started, signum, lr_search, resumed_from)
    # Lightning has put the process's own handlers back: a signal from here on is held until
    # last.ckpt and metrics.json are written, so that it cannot cut them short.
    with signals_held() as held:
        return results.finish(end, held)


def _validate(
    cfg: DictConfig,
    out: Path,
    data: Data,
    generator: torch.Generator,
    ckpt_path: str | None,
    checkpoint: dict[str, Any] | None,
) -> dict[str, Any]:
    """``mode=validate``: the validation metrics of the checkpoint's network, in ``metrics.json``."""
    if not _has_validation(data):
        raise ConfigError(
            [
                "mode='validate' needs validation rows: use data=files with data.val_fraction > 0, "
                "or with data.folds=K data.fold=i"
            ]
        )
    model = load_model(ckpt_path, data)
    out.mkdir(parents=True, exist_ok=True)
    trainer = make_trainer(cfg, out, True, StopOnSignal(package_version()))
    started = time.perf_counter()
    trainer.validate(model, datamodule=data, verbose=False)
    metrics = _record(cfg, out, model, data, trainer, checkpoint, time.perf_counter() - started)
    if trainer.is_global_zero:
        log.info(
            "done: validate, %s: val_loss %r, val_r2 %.4f; files in %s",
            ckpt_path,
            metrics["val_loss"],
            metrics["val_r2"],
            out,
        )
    return metrics


def _predict(
    cfg: DictConfig,
    out: Path,
    data: Data,
    generator: torch.Generator,
    ckpt_path: str | None,
    checkpoint: dict[str, Any] | None,
) -> dict[str, Any]:
    """``mode=predict`` on the config's data: ``predictions.npy``, one row per row of x."""
    model = load_model(ckpt_path, data)
    out.mkdir(parents=True, exist_ok=True)
    trainer = make_trainer(cfg, out, False, StopOnSignal(package_version()))
    started = time.perf_counter()
    predictions = torch.cat(trainer.predict(model, datamodule=data))  # (N, D_out)
    np.save(out / "predictions.npy", predictions.numpy())
    metrics = _record(cfg, out, model, data, trainer, checkpoint, time.perf_counter() - started)
    if trainer.is_global_zero:
        log.info("done: predict, %s: %d predictions in predictions.npy; files in %s", ckpt_path, len(data.x), out)
    return metrics


def _record(
    cfg: DictConfig,
    out: Path,
    model: LitTwoLayerNet,
    data: Data,
    trainer: L.Trainer,
    checkpoint: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    """metrics.json of a validate or predict run: the checkpoint's network and step, what the stage measured."""
    metrics = results.fit_metrics(cfg, model, data, trainer, int(checkpoint["global_step"]), "ok", seconds)
    metrics["versions"] = results.versions(trainer)
    if trainer.is_global_zero:
        results.write_metrics(out, metrics)
    return metrics


def new_model(cfg: DictConfig, data: Data, generator: torch.Generator, lr: float) -> LitTwoLayerNet:
    """The network of a fresh fit: its weights are the next draws of ``generator`` (after the data's)."""
    return LitTwoLayerNet(
        data.x.shape[1],
        cfg.model.hidden_features,
        data.y.shape[1],
        lr=lr,
        activation=cfg.model.activation,
        generator=generator,
        updates_per_step=updates_per_step(cfg),
        update_path=cfg.trainer.update_path,
        init=cfg.model.init,
    )


@functools.cache  # importlib.metadata reads the installed files each time
def package_version() -> str:
    """This package's installed version (stamped into checkpoints), or ``unknown``."""
    try:
        return importlib.metadata.version("twolayer-lightning")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def choose_lr(
    cfg: DictConfig, data: Data, generator: torch.Generator, checkpoint: dict[str, Any] | None
) -> tuple[float, dict[str, Any] | None]:
    """``optim.lr``, or with ``auto`` the lr a range test picks (and its record for metrics.json).

    The range test starts every candidate from the very weights the fit will draw (a copy of the
    generator draws them), trains on the training rows only (holding out part of them to score),
    with the fit's batch setting. A resume takes the lr its checkpoint was trained with.

    Raises:
        ConfigError: every candidate lr diverged.
    """
    if cfg.optim.lr != "auto":
        return float(cfg.optim.lr), None
    if checkpoint is not None:
        return float(checkpoint["hyper_parameters"]["lr"]), None
    copy = torch.Generator().set_state(generator.get_state())
    x, y = data.training_rows if isinstance(data, FileRegressionData) else (data.x, data.y)
    net = TwoLayerNet(x.shape[1], cfg.model.hidden_features, y.shape[1], generator=copy, init=cfg.model.init)
    batch_size = cfg.data.batch_size if cfg.data.kind == "files" else None
    steps = cfg.trainer.max_steps
    started = time.perf_counter()
    try:
        found = search_lr(x, y, net.w1, net.w2, steps, batch_size, cfg.seed, progress=log_progress)
    except ValueError as err:
        raise ConfigError(
            [f"optim.lr=auto: {str(err).removeprefix('search_lr: ')}; or set optim.lr=<number> yourself"]
        ) from None
    found["seconds"] = time.perf_counter() - started
    log.info("optim.lr=auto: %s", describe_search(found))
    return found["lr"], found


def _check_resumable(cfg: DictConfig, data: Data, ckpt_path: str, checkpoint: dict[str, Any], lr: float) -> None:
    """Refuse a checkpoint whose model or data differ from what the config builds, naming the keys.

    What a resume may change: ``optim.lr`` (the remaining updates use the new one; one info line
    says so and ``metrics.json`` keeps the checkpoint's under ``resumed_from``),
    ``trainer.updates_per_step`` and ``trainer.update_path`` (the same arithmetic), ``max_steps``
    and the logging intervals. ``seed`` only matters through the data it draws (refused below when
    that differs); the weights come from the checkpoint, not from ``seed``. ``lr`` is the one the
    remaining updates will use (``optim.lr=auto`` keeps the checkpoint's).
    """
    saved = checkpoint.get("hyper_parameters", {})
    wanted = {
        "in_features": data.x.shape[1],
        "hidden_features": cfg.model.hidden_features,
        "out_features": data.y.shape[1],
        "activation": cfg.model.activation,
    }
    problems = [
        f"model.{key}={value!r} differs from ckpt_path={ckpt_path!r}, which was trained with {saved[key]!r}; "
        "resume with the config the checkpoint was trained with"
        for key, value in wanted.items()
        if key in saved and saved[key] != value
    ]
    trained_on = checkpoint.get(type(data).__qualname__, {}).get("train_data_sha256")
    if trained_on is not None and trained_on != data.state_dict()["train_data_sha256"]:
        problems.append(
            f"ckpt_path={ckpt_path!r} was trained on other data than seed={cfg.seed} and these data settings "
            "give; resume with the seed and data the checkpoint was trained with"
        )
    if checkpoint["global_step"] >= cfg.trainer.max_steps:
        problems.append(
            f"trainer.max_steps={cfg.trainer.max_steps} leaves nothing to train after ckpt_path={ckpt_path!r}, which "
            f"holds {checkpoint['global_step']} updates; use trainer.max_steps > {checkpoint['global_step']}"
        )
    if problems:
        raise ConfigError(problems)
    if saved.get("lr") is not None and saved["lr"] != lr:
        log.info(
            "resuming %s (trained with lr=%g up to step %d) with optim.lr=%g for the remaining steps",
            ckpt_path,
            saved["lr"],
            checkpoint["global_step"],
            lr,
        )


def load_model(ckpt_path: str, data: Data | None = None) -> LitTwoLayerNet:
    """The checkpoint's model; with ``data``, refused unless its sizes fit the data's."""
    model = LitTwoLayerNet.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    sizes = (model.hparams.in_features, model.hparams.out_features)
    if data is not None and sizes != (data.x.shape[1], data.y.shape[1]):
        raise ConfigError(
            [
                f"ckpt_path={ckpt_path!r} holds a model for {sizes[0]} inputs and {sizes[1]} outputs, but the data "
                f"has {data.x.shape[1]} and {data.y.shape[1]}; use the data the checkpoint was trained on"
            ]
        )
    return model


def _predict_file(cfg: DictConfig, out: Path, ckpt_path: str, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``mode=predict`` on a user's file: x alone is read (targets, if the file has them, are not needed).

    Writes ``predictions.npy`` (one row per row of x, in the data's units) and, when x came from a
    CSV, ``predictions.csv`` with the target names the model was trained with as header.
    """
    model = load_model(ckpt_path)
    names = model.column_names or {}
    x = load_inputs(cfg.data.x_path, names.get("x"), list(cfg.data.target_columns), cfg.data.columns_by_position)
    if x.shape[1] != model.hparams.in_features:
        raise ConfigError(
            [
                f"data.x_path={cfg.data.x_path!r} has {x.shape[1]} input columns, but ckpt_path={ckpt_path!r} "
                f"holds a model for {model.hparams.in_features}; give rows with the columns the model was trained on"
            ]
        )
    with isolated_global_state():
        out.mkdir(parents=True, exist_ok=True)
        trainer = L.Trainer(
            accelerator=cfg.trainer.accelerator,
            devices=1,
            precision=cfg.trainer.precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=out,
        )
        started = time.perf_counter()
        loader = torch.utils.data.DataLoader(x, batch_size=cfg.data.batch_size or len(x))
        predictions = torch.cat(trainer.predict(model, dataloaders=loader)).cpu()  # (N, D_out), the data's units
        seconds = time.perf_counter() - started
    files = _write_predictions(out, predictions, cfg.data.x_path, names.get("y"))
    metrics = {
        "status": "ok",
        "mode": "predict",
        "train_loss": math.nan,  # no training in predict
        "global_step": int(checkpoint["global_step"]),
        "lr": model.hparams.lr,
        "num_samples": len(x),
        "in_features": model.hparams.in_features,
        "hidden_features": model.hparams.hidden_features,
        "out_features": model.hparams.out_features,
        "standardized": model.net.scaled,
        "fit_seconds": seconds,
        "versions": results.versions(trainer),
    }
    results.write_metrics(out, metrics)
    log.info("done: predict, %s: %d predictions in %s; files in %s", ckpt_path, len(x), " and ".join(files), out)
    return metrics


def _write_predictions(out: Path, predictions: torch.Tensor, x_path: str, y_names: list[str] | None) -> list[str]:
    """``predictions.npy``, and ``predictions.csv`` (headed by the target names) when x came from a CSV."""
    np.save(out / "predictions.npy", predictions.numpy())
    files = ["predictions.npy"]
    if Path(x_path).suffix.lower() == ".csv":
        header = y_names or [f"y{j}" for j in range(predictions.shape[1])]
        with (out / "predictions.csv").open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(header)
            writer.writerows(predictions.tolist())
        files.append("predictions.csv")
    return files
