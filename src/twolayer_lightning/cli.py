"""Composition and entry: ``train(cfg)``, ``run(overrides)`` and the Hydra command line.

This is the only module that knows Hydra. ``python train.py`` and ``python -m twolayer_lightning``
both call :func:`main`.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import errno
import functools
import importlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from twolayer_lightning.checkpoints import (
    AtomicCheckpointIO,
    DiskFullError,
    StopOnSignal,
    newest_checkpoint,
    read_checkpoint,
)
from twolayer_lightning.config import Config, ConfigError, register_configs, updates_per_step, validate
from twolayer_lightning.data import DataError, FileRegressionData, SyntheticRegressionData, load_inputs
from twolayer_lightning.model import TwoLayerNet
from twolayer_lightning.module import LitTwoLayerNet, UpdateProgressBar
from twolayer_lightning.optim import search_lr
from twolayer_lightning.report import exit_if_no_job_ok, plot_run, summarize_sweep
from twolayer_lightning.rundir import RunDirLock, check_run_dir, is_rank_zero, resume_hint, slurm_requeued

log = logging.getLogger(__name__)

CONFIG_MODULE = "twolayer_lightning.conf"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "last.ckpt"
HELD_SIGNALS = (signal.SIGTERM, signal.SIGINT)

register_configs()


class TrainingDivergedError(RuntimeError):
    """The training loss became inf or nan."""


class TrainingInterruptedError(RuntimeError):
    """SIGTERM or SIGINT stopped training after an update; ``last.ckpt`` and ``metrics.json`` record it.

    Attributes:
        exit_code: the shell's convention for the signal, 128 + its number (143 SIGTERM, 130 SIGINT).
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


@contextlib.contextmanager
def _isolated_global_state() -> Iterator[None]:
    """Run with exact float32 matmuls and leave no global state behind for the next job.

    TF32 matmuls (what "high" precision allows on Ampere and newer GPUs) turn the default run's
    final loss from 3e-05 into 26 on an H100, so training always runs at "highest". The global
    RNG (which the DataLoader machinery draws from) is forked so that jobs sharing one process in
    a multirun leave each other's random state alone.
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
def _signals_held() -> Iterator[list[int]]:
    """Record SIGTERM and SIGINT instead of acting on them; yields the list of those received."""
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


def _output_dir(cfg: DictConfig) -> Path:
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


def _make_logger(kind: str, out: Path, resume_step: int | None = None) -> Any:
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
        reader = csv.DictReader(file)
        keys = list(reader.fieldnames or [])
        rows = [row for row in reader if _step_of(row) < resume_step]
    writer = logger.experiment  # deletes the old file
    writer.metrics_keys = keys
    writer.metrics = rows
    writer.save()


def _step_of(row: dict[str, str]) -> float:
    """A CSV row's step; inf (dropped) for a row cut short by a kill during a write."""
    try:
        return float(row.get("step") or "inf")
    except ValueError:
        return math.inf


def _make_data(cfg: DictConfig, generator: torch.Generator) -> SyntheticRegressionData | FileRegressionData:
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


def _has_validation(data: SyntheticRegressionData | FileRegressionData) -> bool:
    return isinstance(data, FileRegressionData) and len(data.val_indices) > 0


def _make_trainer(
    cfg: DictConfig, out: Path, validation: bool, ups: int, stopper: StopOnSignal, resume_step: int | None
) -> L.Trainer:
    callbacks: list[L.Callback] = [stopper]
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
        val_check_interval=cfg.trainer.val_every_n_steps // ups if validation else None,
        check_val_every_n_epoch=None,
        limit_val_batches=None if validation else 0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the data modules shard rows across processes themselves
        enable_progress_bar=progress_bar,
        logger=_make_logger(cfg.logger, out, resume_step),
        callbacks=callbacks + bar,
        plugins=[AtomicCheckpointIO()],  # every checkpoint written beside its final name, then renamed
        enable_checkpointing=len(callbacks) > 1,  # last.ckpt is saved after fit in any case (callbacks[0]: stopper)
        enable_model_summary=False,
        default_root_dir=out,
    )


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
        cfg: a config composed from ``conf/config.yaml`` (see :func:`run` to compose one).

    Returns:
        The metrics written to ``metrics.json``: ``status``, ``train_loss`` (the loss of the last
        step, the last number the seed prints), ``global_step``, ``seed``, ``lr``, ``accelerator``,
        ``fit_seconds``, ``updates_per_step`` and ``update_path`` (the path the fit took), the sizes,
        the validation metrics when there are any, ``lr_search`` with ``optim.lr=auto`` and
        ``versions``. Here inf and nan are floats; in ``metrics.json`` they are null, and
        ``non_finite`` names them. ``train_loss`` is the objective optimized: with
        ``data.standardize`` the sum of squares in standardized units; the validation metrics
        are in the data's units. ``mode=validate`` and ``mode=predict`` record the checkpoint's
        ``global_step``.

    Raises:
        ConfigError: a value is out of range, the data does not fit the model, the checkpoint
            cannot be resumed, or the output dir holds a finished run or is in use; nothing has
            been written then.
        DataError: a data file cannot be used; nothing has been written then.
        TrainingDivergedError: the loss became inf or nan; ``metrics.json`` records it.
        TrainingInterruptedError: SIGTERM or SIGINT stopped the run after an update; ``last.ckpt``
            holds that update and ``metrics.json`` says ``interrupted``.
        DiskFullError: the disk filled up; the checkpoints written before are intact.
    """
    validate(cfg)
    out = _output_dir(cfg)
    # One run at a time in a run dir (the Hydra callback RunDirGuard may hold this lock already).
    lock = RunDirLock(out.absolute()) if is_rank_zero() else None
    if lock is not None:
        lock.acquire()
    try:
        with contextlib.ExitStack() as after_fit:
            return _train_in(cfg, out, after_fit)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(err, DiskFullError):
            # A full disk while writing a log, a plot or metrics.json: one line, not a traceback.
            raise DiskFullError(
                err.errno,
                f"no space left on the device writing {err.filename or out}; free some space and resume with "
                f"`{resume_hint(out)}`",
            ) from err
        raise
    finally:
        if lock is not None:
            lock.release()


def _train_in(cfg: DictConfig, out: Path, after_fit: contextlib.ExitStack) -> dict[str, Any]:
    """:func:`train` in the checked and locked run dir ``out``; ``after_fit`` holds signals from the fit's end."""
    ckpt_path = _resolve_ckpt_path(cfg, out)
    checkpoint = read_checkpoint(ckpt_path) if ckpt_path is not None else None
    resume_step = int(checkpoint["global_step"]) if checkpoint is not None and cfg.mode == "train" else None
    ups = updates_per_step(cfg)
    if cfg.mode == "predict" and cfg.data.kind == "files":
        return _predict_files(cfg, out, ckpt_path, checkpoint)
    lr_search = None
    with _isolated_global_state():
        # One generator draws x, y, w1, w2 in the seed's order: the data first, then the weights.
        generator = torch.Generator().manual_seed(cfg.seed)
        data = _make_data(cfg, generator)
        validation = _has_validation(data)
        if cfg.mode == "train":
            lr, lr_search = _choose_lr(cfg, data, generator, checkpoint)
            if checkpoint is not None:
                _check_resumable(cfg, data, ckpt_path, checkpoint, lr)
            model = _new_model(cfg, data, generator, lr, ups)
        else:
            model = _load_model(ckpt_path, data)
        out.mkdir(parents=True, exist_ok=True)
        stopper = StopOnSignal(_package_version())
        trainer = _make_trainer(cfg, out, validation, ups, stopper, resume_step)
        started = time.perf_counter()
        interrupted: int | None = None  # the signal that stopped the run
        try:
            if cfg.mode == "train":
                # weights_only: a checkpoint holds tensors and scalars only, so no pickled code is run.
                trainer.fit(model, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
            elif cfg.mode == "validate":
                if not validation:
                    raise ConfigError(
                        ["mode='validate' needs validation rows: use data=files with data.val_fraction > 0"]
                    )
                trainer.validate(model, datamodule=data, verbose=False)
            else:
                predictions = torch.cat(trainer.predict(model, datamodule=data))  # (N, D_out)
                np.save(out / "predictions.npy", predictions.numpy())
        except SIGTERMException:
            # Lightning ended the fit at the end of a training step after SIGTERM (or Ctrl-C, which
            # StopOnSignal routes there); the module stopped its updates at the first one after it.
            interrupted = stopper.received or signal.SIGTERM
        # Lightning has put the process's own handlers back: a signal from here on is held until
        # last.ckpt and metrics.json are written, so that it cannot cut them short.
        held = after_fit.enter_context(_signals_held())
        if cfg.mode == "train" and model.diverged_at is None:
            # The full state of the last finished update, also after a signal: resumable, bitwise.
            trainer.save_checkpoint(out / CHECKPOINT_FILE, weights_only=False)
        seconds = time.perf_counter() - started
    status = "interrupted" if interrupted else "ok" if model.diverged_at is None else "diverged"
    global_step = trainer.global_step if cfg.mode == "train" else int(checkpoint["global_step"])
    metrics = _fit_metrics(cfg, model, data, trainer, global_step, status, seconds)
    if interrupted:
        metrics["signal"] = signal.Signals(interrupted).name
    if resume_step is not None:
        # lr: the remaining updates ran at optim.lr (see _check_resumable); the checkpoint's is kept here.
        metrics["resumed_from"] = {
            "ckpt_path": str(ckpt_path),
            "global_step": resume_step,
            "lr": checkpoint["hyper_parameters"].get("lr"),
        }
    if lr_search is not None:
        metrics["lr_search"] = lr_search
    metrics["versions"] = _versions(trainer)
    if trainer.is_global_zero:
        _write_metrics(out, metrics)
        if cfg.logger == "csv" and cfg.mode == "train":
            plot_run(out)  # loss.png; without matplotlib, one warning line and no picture
    if held and not interrupted:
        raise TrainingInterruptedError(
            f"interrupted by {signal.Signals(held[0]).name} after training had finished; its files in {out} are "
            "complete",
            held[0],
        )
    if interrupted:
        raise TrainingInterruptedError(
            f"interrupted by {signal.Signals(interrupted).name} after {trainer.global_step} updates (global_step "
            f"{trainer.global_step}, saved in {out / CHECKPOINT_FILE}); resume with `{resume_hint(out)}`",
            interrupted,
        )
    if model.diverged_at is not None:
        raise TrainingDivergedError(_diverged_message(model, lr_search, trainer.global_step))
    if trainer.is_global_zero:
        if cfg.mode == "train":
            summary = f"{metrics['global_step']} steps, final loss {metrics['train_loss']!r}, {seconds:.2f} s in fit"
        elif cfg.mode == "validate":
            summary = f"{ckpt_path}: val_loss {metrics['val_loss']!r}, val_r2 {metrics['val_r2']:.4f}"
        else:
            summary = f"{ckpt_path}: {metrics['num_samples']} predictions in predictions.npy"
        log.info("done: %s, %s; files in %s", cfg.mode, summary, out)
    return metrics


def _new_model(
    cfg: DictConfig, data: SyntheticRegressionData | FileRegressionData, generator: torch.Generator, lr: float, ups: int
) -> LitTwoLayerNet:
    """The network of a fresh fit: its weights are the next draws of ``generator`` (after the data's)."""
    return LitTwoLayerNet(
        data.x.shape[1],
        cfg.model.hidden_features,
        data.y.shape[1],
        lr=lr,
        activation=cfg.model.activation,
        generator=generator,
        updates_per_step=ups,
        update_path=cfg.trainer.update_path,
        init=cfg.model.init,
    )


def _fit_metrics(
    cfg: DictConfig,
    model: LitTwoLayerNet,
    data: SyntheticRegressionData | FileRegressionData,
    trainer: L.Trainer,
    global_step: int,
    status: str,
    seconds: float,
) -> dict[str, Any]:
    """The part of metrics.json every train, validate or predict run of the config records (see :func:`train`)."""
    metrics = {
        "status": status,
        "mode": cfg.mode,
        "train_loss": model.last_loss,
        "global_step": global_step,
        "seed": cfg.seed,
        "lr": model.hparams.lr,
        "accelerator": trainer.accelerator.__class__.__name__.removesuffix("Accelerator").lower(),
        "num_samples": len(data.x),
        "in_features": model.hparams.in_features,
        "hidden_features": model.hparams.hidden_features,
        "out_features": model.hparams.out_features,
        "fit_seconds": seconds,
        "updates_per_step": model.hparams.updates_per_step,
        "update_path": model.update_path_taken,
        "dead_units": model.dead_units,
        **{k: v for k, v in trainer.callback_metrics.items() if k.startswith("val_")},
    }
    metrics = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
    if model.diverged_at is not None:
        metrics["diverged_at_step"] = model.diverged_at
    return metrics


def _diverged_message(model: LitTwoLayerNet, lr_search: dict[str, Any] | None, global_step: int) -> str:
    return (
        f"training diverged: the loss became {model.last_loss} at step {model.diverged_at} with "
        f"optim.lr={model.hparams.lr:g}{' (picked by optim.lr=auto)' if lr_search else ''} and stopped at step "
        f"{global_step - 1}; use a smaller optim.lr (the seed's is 1e-6)"
    )


@functools.cache  # importlib.metadata reads the installed files each time
def _package_version() -> str:
    try:
        return importlib.metadata.version("twolayer-lightning")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _choose_lr(
    cfg: DictConfig,
    data: SyntheticRegressionData | FileRegressionData,
    generator: torch.Generator,
    checkpoint: dict[str, Any] | None,
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
    started = time.perf_counter()
    try:
        found = search_lr(x, y, net.w1, net.w2, steps=cfg.trainer.max_steps, batch_size=batch_size, seed=cfg.seed)
    except ValueError as err:
        raise ConfigError(
            [f"optim.lr=auto: {str(err).removeprefix('search_lr: ')}; or set optim.lr=<number> yourself"]
        ) from None
    found["seconds"] = time.perf_counter() - started
    log.info(
        "optim.lr=auto: lr %.3g (range test: %d steps on %d training rows, scored on %d held-out ones; held-out MSE "
        "by lr: %s)",
        found["lr"],
        found["steps"],
        found["fit_rows"],
        found["held_out_rows"],
        ", ".join(
            f"{lr:.3g}: {'diverged' if mse is None else f'{mse:.4g}'}"
            for lr, mse in zip(found["candidates"], found["held_out_mse"], strict=True)
        ),
    )
    return found["lr"], found


def _versions(trainer: L.Trainer | None) -> dict[str, str]:
    """What the run's numbers depend on: the library versions and the device it computed on."""
    device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            models = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
            name = models[0].split(":", 1)[1].strip() if models else name
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "numpy": np.__version__,
        "device": f"{device.type}: {name}",
    }


def _strict_json(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` with every inf or nan float as None (JSON has neither), listed under ``non_finite``.

    ``non_finite`` maps each such key to "inf", "-inf" or "nan"; with ``status: diverged`` it says
    why the loss is missing, in a validate or predict run that no training loss exists.
    """
    non_finite: dict[str, str] = {}

    def clean(key: str, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            non_finite[key] = str(value)
            return None
        if isinstance(value, dict):
            return {k: clean(f"{key}.{k}", v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(f"{key}[{i}]", v) for i, v in enumerate(value)]
        return value

    cleaned = {key: clean(key, value) for key, value in metrics.items()}
    if non_finite:
        cleaned["non_finite"] = non_finite
    return cleaned


def _write_metrics(out: Path, metrics: dict[str, Any]) -> None:
    """metrics.json as strict JSON that any parser reads (see :func:`_strict_json`); ``train`` returns
    the metrics as they are, inf and nan included."""
    temp = out / f".{METRICS_FILE}.tmp"  # renamed into place: never a half-written metrics.json
    temp.write_text(json.dumps(_strict_json(metrics), indent=2, allow_nan=False) + "\n")
    os.replace(temp, out / METRICS_FILE)


def _predict_files(cfg: DictConfig, out: Path, ckpt_path: str, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``mode=predict`` on a user's file: x alone is read (targets, if the file has them, are not needed).

    Writes ``predictions.npy`` (one row per row of x, in the data's units) and, when x came from a
    CSV, ``predictions.csv`` with the target names the model was trained with as header.
    """
    model = _load_model(ckpt_path)
    names = model.column_names or {}
    x = load_inputs(cfg.data.x_path, names.get("x"), list(cfg.data.target_columns))
    if x.shape[1] != model.hparams.in_features:
        raise ConfigError(
            [
                f"data.x_path={cfg.data.x_path!r} has {x.shape[1]} input columns, but ckpt_path={ckpt_path!r} "
                f"holds a model for {model.hparams.in_features}; give rows with the columns the model was trained on"
            ]
        )
    with _isolated_global_state():
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
    np.save(out / "predictions.npy", predictions.numpy())
    files = ["predictions.npy"]
    if Path(cfg.data.x_path).suffix.lower() == ".csv":
        header = names.get("y") or [f"y{j}" for j in range(predictions.shape[1])]
        with (out / "predictions.csv").open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(header)
            writer.writerows(predictions.tolist())
        files.append("predictions.csv")
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
        "versions": _versions(trainer),
    }
    _write_metrics(out, metrics)
    log.info("done: predict, %s: %d predictions in %s; files in %s", ckpt_path, len(x), " and ".join(files), out)
    return metrics


def _check_resumable(
    cfg: DictConfig,
    data: SyntheticRegressionData | FileRegressionData,
    ckpt_path: str,
    checkpoint: dict[str, Any],
    lr: float,
) -> None:
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


def _load_model(ckpt_path: str, data: SyntheticRegressionData | FileRegressionData | None = None) -> LitTwoLayerNet:
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


def run(overrides: Sequence[str] = (), output_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Compose the packaged config with ``overrides`` and :func:`train` it: for notebooks and other projects.

    A later call with the same overrides reuses the composed config (Hydra's composition is most of
    a short run's set-up), as long as the packaged config files are unchanged.

    Args:
        overrides: Hydra overrides, as on the command line, e.g. ``["optim.lr=2e-6"]``.
        output_dir: where the run writes its files; a new ``outputs/<date>/<time>`` below the
            current folder if None (as ``python train.py`` does).

    Returns:
        The metrics of :func:`train`.

    Example:
        >>> metrics = run(["trainer.max_steps=3", "logger=none"], output_dir=getfixture("tmp_path"))
        >>> metrics["global_step"]
        3
    """
    if output_dir is None:
        output_dir = Path("outputs") / datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
    cfg = copy.deepcopy(_composed(tuple(overrides), _config_files_stamp()))  # train() gets a config of its own
    cfg.output_dir = str(output_dir)
    return train(cfg)


@functools.lru_cache(maxsize=32)
def _composed(overrides: tuple[str, ...], stamp: tuple[tuple[str, int], ...]) -> DictConfig:
    """The packaged config composed with ``overrides`` (``output_dir`` left to the caller).

    Hydra's composition takes 100-200 ms on a 2-core machine, more than the rest of a short
    run's set-up together, and gives the same config for the same overrides and config files:
    ``stamp`` (:func:`_config_files_stamp`) makes an edited or added YAML file compose afresh.
    """
    with hydra.initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra.compose(config_name="config", overrides=list(overrides))


def _config_files_stamp() -> tuple[tuple[str, int], ...]:
    """Every packaged YAML file with its modification time, in nanoseconds."""
    root = Path(importlib.import_module(CONFIG_MODULE).__file__).parent
    return tuple((str(path), path.stat().st_mtime_ns) for path in sorted(root.rglob("*.yaml")))


def _task(cfg: DictConfig) -> float:
    """The Hydra task: train, and return the objective for sweepers.

    The objective is the validation loss when the data has validation rows, else the final train
    loss; +inf for a job of a sweep that diverged or failed (its ``metrics.json`` and the sweep's
    summary say which). Not nan: hydra-optuna-sweeper 1.3.0 ends the whole search at a nan (it
    tells Optuna the trial failed and then passes the nan again), while +inf is a value every
    sweeper takes and ranks last, so Optuna's sampler steers away from the settings that did it.
    """
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun and cfg.trainer.strategy == "ddp":
        # Lightning restarts the script for each DDP rank with the job's overrides, which a sweep's
        # jobs cannot take (Lightning #15737, Hydra #2070). SystemExit, not an exception: Hydra would
        # record that and start the next job; this ends the sweep at its first job, before training.
        # (A Hydra callback cannot refuse earlier: Hydra turns exceptions in callbacks into warnings.)
        err = ConfigError(
            [
                "trainer.strategy='ddp' cannot run inside a -m sweep: run each DDP job as its own "
                "`python train.py trainer=ddp ...`, or sweep with one process per job"
            ]
        )
        print(describe_error(err), file=sys.stderr)
        raise SystemExit(2)
    try:
        metrics = train(cfg)
        return metrics.get("val_loss", metrics["train_loss"])
    except TrainingInterruptedError as err:
        # A signal ends the whole sweep, not just this job: launch nothing more, but summarise
        # what ran (the SweepSummary callback would not run after this SystemExit).
        if multirun:
            log.error("job interrupted: %s", err)
            summarize_sweep(HydraConfig.get().sweep.dir)
        if _user_wants_tracebacks():
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except (ConfigError, DataError, TrainingDivergedError, DiskFullError) as err:
        if multirun:
            # In a sweep, one bad job must not end the others: log it, and give the sweeper +inf.
            log.error("job failed: %s", describe_error(err))
            return math.inf
        if _user_wants_tracebacks():
            raise
        # A single run ends here, before Hydra adds its "Error executing job" line and a traceback.
        print(describe_error(err), file=sys.stderr)
        raise SystemExit(2) from None


def describe_error(err: BaseException) -> str:
    """One line (or one per problem) for a user's mistake: what is wrong, the value, what to use."""
    if isinstance(err, ConfigError):
        return "\n".join(f"error: {problem}" for problem in err.problems)
    if isinstance(err, DiskFullError):
        return f"error: {err.strerror}"
    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key = cause.full_key
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
            parent, _, _ = key.rpartition(".")
            schema = OmegaConf.structured(Config)
            node = OmegaConf.select(schema, parent) if parent else schema
            known = (
                ", ".join(f"{parent + '.' if parent else ''}{k}" for k in node) if isinstance(node, DictConfig) else ""
            )
            return f"error: unknown config key {key!r}" + (f"; known keys here: {known}" if known else "")
        message = str(cause.msg).splitlines()[0] if getattr(cause, "msg", None) else str(cause).splitlines()[0]
        return f"error: {key}: {message}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if "Config search path:" in lines:
        lines = lines[: lines.index("Config search path:")]
    return "error: " + " ".join(lines)


def _hydra_main() -> None:
    hydra.main(version_base="1.3", config_path="conf", config_name="config")(_task)()


_OUR_FULL_ERROR = "TWOLAYER_LIGHTNING_SET_HYDRA_FULL_ERROR"


def _user_wants_tracebacks() -> bool:
    """HYDRA_FULL_ERROR=1 set by the user, not by :func:`main`."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1" and _OUR_FULL_ERROR not in os.environ


def main() -> None:
    """``python train.py [overrides]``: a user's mistake ends with one line and exit status 2.

    Set ``HYDRA_FULL_ERROR=1`` to see the full traceback instead.
    """
    full_error = _user_wants_tracebacks()
    if not full_error:
        # With this set Hydra raises its errors instead of printing them with a traceback, so that
        # they can be shown here as one line. The marker tells it from a user's setting, also in
        # the DDP ranks that Lightning starts by running this command again with this environment.
        os.environ["HYDRA_FULL_ERROR"] = "1"
        os.environ[_OUR_FULL_ERROR] = "1"
    try:
        _hydra_main()
        # A -m sweep in which no job ended ok exits report.NO_OK_JOB_EXIT (1), its summary written by then.
        exit_if_no_job_ok()
    except KeyboardInterrupt:
        # Ctrl-C outside a fit (a fit stops after its current update, see StopOnSignal).
        if full_error:
            raise
        print("error: interrupted by SIGINT outside the training loop; its files may be incomplete", file=sys.stderr)
        raise SystemExit(128 + signal.SIGINT) from None
    except (
        ConfigError,
        DataError,
        TrainingDivergedError,
        DiskFullError,
        HydraException,
        OmegaConfBaseException,
    ) as err:
        if full_error:
            raise
        print(describe_error(err), file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if not full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)
            os.environ.pop(_OUR_FULL_ERROR, None)
