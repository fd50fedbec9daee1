"""Composition and entry: ``train(cfg)``, ``run(overrides)`` and the Hydra command line.

This is the only module that knows Hydra. ``python train.py`` and ``python -m twolayer_lightning``
both call :func:`main`.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import importlib.metadata
import json
import logging
import math
import os
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
from twolayer_lightning.data import DataError, FileRegressionData, SyntheticRegressionData
from twolayer_lightning.module import LitTwoLayerNet
from twolayer_lightning.report import plot_run, summarize_sweep
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
    data = FileRegressionData.from_files(
        cfg.data.x_path,
        cfg.data.y_path,
        list(cfg.data.target_columns) or None,
        val_fraction=cfg.data.val_fraction,
        batch_size=cfg.data.batch_size,
        shuffle=cfg.data.shuffle,
        seed=cfg.seed,
    )
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
        # In a terminal, a bar; in a log file or CI, only the periodic `step t  loss` lines.
        enable_progress_bar=sys.stdout.isatty()
        if cfg.trainer.enable_progress_bar is None
        else cfg.trainer.enable_progress_bar,
        logger=_make_logger(cfg.logger, out, resume_step),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],  # every checkpoint written beside its final name, then renamed
        enable_checkpointing=len(callbacks) > 1,  # last.ckpt is saved after fit in any case
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
        and the validation metrics when there are any.

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
    with _isolated_global_state():
        # One generator draws x, y, w1, w2 in the seed's order: the data first, then the weights.
        generator = torch.Generator().manual_seed(cfg.seed)
        data = _make_data(cfg, generator)
        validation = _has_validation(data)
        if cfg.mode == "train":
            if checkpoint is not None:
                _check_resumable(cfg, data, ckpt_path, checkpoint)
            model = LitTwoLayerNet(
                data.x.shape[1],
                cfg.model.hidden_features,
                data.y.shape[1],
                lr=cfg.optim.lr,
                activation=cfg.model.activation,
                generator=generator,
                updates_per_step=ups,
                update_path=cfg.trainer.update_path,
            )
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
    metrics = {
        "status": status,
        "mode": cfg.mode,
        "train_loss": model.last_loss,
        "global_step": trainer.global_step,
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
    if interrupted:
        metrics["signal"] = signal.Signals(interrupted).name
    if resume_step is not None:
        # lr: the remaining updates ran at optim.lr (see _check_resumable); the checkpoint's is kept here.
        metrics["resumed_from"] = {
            "ckpt_path": str(ckpt_path),
            "global_step": resume_step,
            "lr": checkpoint["hyper_parameters"].get("lr"),
        }
    metrics = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
    if trainer.is_global_zero:
        # A diverged run records its inf/nan loss as JSON's Infinity/NaN.
        temp = out / f".{METRICS_FILE}.tmp"  # renamed into place: never a half-written metrics.json
        temp.write_text(json.dumps(metrics, indent=2) + "\n")
        os.replace(temp, out / METRICS_FILE)
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
        raise TrainingDivergedError(
            f"training diverged: the loss became {model.last_loss} at step {model.diverged_at} with "
            f"optim.lr={cfg.optim.lr:g} and stopped at step {trainer.global_step - 1}; use a smaller optim.lr "
            "(the seed's is 1e-6)"
        )
    if trainer.is_global_zero:
        if cfg.mode == "train":
            summary = f"{metrics['global_step']} steps, final loss {metrics['train_loss']!r}, {seconds:.2f} s in fit"
        elif cfg.mode == "validate":
            summary = f"{ckpt_path}: val_loss {metrics['val_loss']!r}, val_r2 {metrics['val_r2']:.4f}"
        else:
            summary = f"{ckpt_path}: {metrics['num_samples']} predictions in predictions.npy"
        log.info("done: %s, %s; files in %s", cfg.mode, summary, out)
    return metrics


def _package_version() -> str:
    try:
        return importlib.metadata.version("twolayer-lightning")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _check_resumable(
    cfg: DictConfig, data: SyntheticRegressionData | FileRegressionData, ckpt_path: str, checkpoint: dict[str, Any]
) -> None:
    """Refuse a checkpoint whose model or data differ from what the config builds, naming the keys.

    What a resume may change: ``optim.lr`` (the remaining updates use the new one; one info line
    says so and ``metrics.json`` keeps the checkpoint's under ``resumed_from``),
    ``trainer.updates_per_step`` and ``trainer.update_path`` (the same arithmetic), ``max_steps``
    and the logging intervals. ``seed`` only matters through the data it draws (refused below when
    that differs); the weights come from the checkpoint, not from ``seed``.
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
    if saved.get("lr") is not None and saved["lr"] != cfg.optim.lr:
        log.info(
            "resuming %s (trained with lr=%g up to step %d) with optim.lr=%g for the remaining steps",
            ckpt_path,
            saved["lr"],
            checkpoint["global_step"],
            cfg.optim.lr,
        )


def _load_model(ckpt_path: str, data: SyntheticRegressionData | FileRegressionData) -> LitTwoLayerNet:
    model = LitTwoLayerNet.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    sizes = (model.hparams.in_features, model.hparams.out_features)
    if sizes != (data.x.shape[1], data.y.shape[1]):
        raise ConfigError(
            [
                f"ckpt_path={ckpt_path!r} holds a model for {sizes[0]} inputs and {sizes[1]} outputs, but the data "
                f"has {data.x.shape[1]} and {data.y.shape[1]}; use the data the checkpoint was trained on"
            ]
        )
    return model


def run(overrides: Sequence[str] = (), output_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Compose the packaged config with ``overrides`` and :func:`train` it: for notebooks and other projects.

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
    with hydra.initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = hydra.compose(config_name="config", overrides=[*overrides, f"output_dir={output_dir}"])
    return train(cfg)


def _task(cfg: DictConfig) -> float:
    """The Hydra task: train, and return the objective for sweepers.

    The objective is the validation loss when the data has validation rows, else the final train
    loss; nan for a job that failed or diverged.
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
            # In a sweep, one bad job must not end the others: log it, and give the sweeper nan.
            log.error("job failed: %s", describe_error(err))
            return math.nan
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
