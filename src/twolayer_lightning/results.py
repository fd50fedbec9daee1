"""The end of a training run, written one way for a single run and for every member of a stacked fit.

:func:`finish` decides the run's status (:func:`run_status`), saves ``last.ckpt`` through the
Trainer's own checkpoint code, writes ``metrics.json`` and ``loss.png``, and ends with the run's
final line or the exception that carries it. Whatever the path that trained the network, a run
in the same state leaves the same files and says the same thing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import platform
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig

from twolayer_lightning.data import FileRegressionData
from twolayer_lightning.errors import DiskFullError, TrainingDivergedError, TrainingInterruptedError
from twolayer_lightning.module import LitTwoLayerNet
from twolayer_lightning.report import plot_run
from twolayer_lightning.rundir import METRICS_FILE, has_checkpoint, resume_hint

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.ckpt"


def run_status(diverged: bool, interrupted: bool) -> str:
    """The status of a training run: ``diverged`` wins over ``interrupted``, which wins over ``ok``.

    A run whose loss turned inf or nan has failed whatever came after: its weights are not worth
    resuming, so it keeps no ``last.ckpt`` and its folder counts as finished, also when a signal
    stopped it later (its ``metrics.json`` then names the signal too). Only an ``interrupted`` run
    is resumable in place.
    """
    return "diverged" if diverged else "interrupted" if interrupted else "ok"


@dataclass
class RunEnd:
    """What a finished fit leaves for :func:`finish`: the run, its model and data, and how it stopped."""

    cfg: DictConfig
    out: Path
    model: LitTwoLayerNet
    data: Any  # the run's data module
    trainer: L.Trainer  # holds the model (and its fit's loop state) for the checkpoint
    seconds: float  # wall time of the fit
    signum: int | None = None  # the signal that stopped the fit, or None
    lr_search: dict[str, Any] | None = None  # optim.lr=auto's record
    resumed_from: dict[str, Any] | None = None  # the checkpoint a resume started from
    extra: dict[str, Any] = field(default_factory=dict)  # keys of its own (a stacked member's)
    fit_name: str = "fit"  # how the final line names the fit
    global_step: int | None = None  # the updates this network ran; None: the trainer's


def finish(end: RunEnd, held: list[int] | None = None) -> dict[str, Any]:
    """Write the end of a training run into ``end.out`` and say how it ended.

    Saves ``last.ckpt`` (unless the run diverged), writes ``metrics.json`` and ``loss.png`` (rank 0),
    then logs the final line, or raises with it.

    Args:
        end: the finished fit.
        held: signals that came while the files were written (see ``training.signals_held``);
            None where the caller reports them itself.

    Returns:
        The metrics written to ``metrics.json`` (inf and nan as floats).

    Raises:
        TrainingDivergedError: the loss became inf or nan.
        TrainingInterruptedError: a signal stopped the fit, or came while its files were written.
        OSError: a file could not be written; its callers (``training.train``, ``stacked.finish``) turn a
            full disk into :class:`DiskFullError` with :func:`disk_full`, as for every other file of the run.
    """
    model, trainer, out = end.model, end.trainer, end.out
    diverged = model.diverged_at is not None
    status = run_status(diverged, end.signum is not None)
    global_step = trainer.global_step if end.global_step is None else end.global_step
    if not diverged:
        # The full state of the last finished update, also after a signal: resumable, bitwise.
        trainer.save_checkpoint(out / CHECKPOINT_FILE, weights_only=False)
    metrics = fit_metrics(end.cfg, model, end.data, trainer, global_step, status, end.seconds)
    if end.signum is not None:
        metrics["signal"] = signal.Signals(end.signum).name
    for key, value in (("resumed_from", end.resumed_from), ("lr_search", end.lr_search)):
        if value is not None:
            metrics[key] = value
    metrics.update(end.extra)
    metrics["versions"] = versions(trainer)
    if trainer.is_global_zero:
        write_metrics(out, metrics)
        if end.cfg.logger == "csv":
            plot_run(out)  # loss.png; without matplotlib, one warning line and no picture
    _wait_for_other_ranks(trainer)
    _say_how_it_ended(end, status, global_step, held)
    return metrics


def _wait_for_other_ranks(trainer: Any, timeout: float = 60.0) -> None:
    """DDP: rank 0 waits for the ranks Lightning started as its child processes, so that none outlives it.

    They end on their own after the checkpoint's save (the last collective); one still running after
    ``timeout`` seconds is killed.
    """
    for process in getattr(trainer.strategy.launcher, "procs", ()):  # Lightning's _SubprocessScriptLauncher
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _say_how_it_ended(end: RunEnd, status: str, global_step: int, held: list[int] | None) -> None:
    """The run's final line: logged when it is ``ok``, else raised as the error that carries it."""
    model, out = end.model, end.out
    if status == "diverged":
        message = diverged_message(model, end.lr_search, global_step)
        if end.signum is None:
            raise TrainingDivergedError(message)
        # The signal still ends the process (and a sweep) as a signal does; nothing is left to resume.
        raise TrainingInterruptedError(f"{message}; {signal.Signals(end.signum).name} came after it", end.signum)
    if status == "interrupted":
        raise TrainingInterruptedError(
            f"interrupted by {signal.Signals(end.signum).name} after {global_step} updates (global_step "
            f"{global_step}, saved in {out / CHECKPOINT_FILE}); resume with `{resume_hint(out)}`",
            end.signum,
        )
    if held:
        raise TrainingInterruptedError(
            f"interrupted by {signal.Signals(held[0]).name} after training had finished; its files in {out} are "
            "complete",
            held[0],
        )
    if end.trainer.is_global_zero:
        log.info(
            "done: train, %d steps, final loss %r, %.2f s in %s; files in %s",
            global_step,
            model.last_loss,
            end.seconds,
            end.fit_name,
            out,
        )


def disk_full(err: OSError, out: Path) -> OSError:
    """``err`` as one line when it says the disk is full (a log, a plot, metrics.json); else ``err`` itself."""
    if err.errno not in (errno.ENOSPC, errno.EDQUOT) or isinstance(err, DiskFullError):
        return err
    then = f"resume with `{resume_hint(out)}`" if has_checkpoint(out) else "run it again"
    return DiskFullError(
        err.errno, f"no space left on the device writing {err.filename or out}; free some space and {then}"
    )


def fit_metrics(
    cfg: DictConfig,
    model: LitTwoLayerNet,
    data: Any,
    trainer: L.Trainer,
    global_step: int,
    status: str,
    seconds: float,
) -> dict[str, Any]:
    """The part of metrics.json every train, validate or predict run of the config records.

    ``status``, ``train_loss`` (the loss of the last step, the last number the seed prints; with
    ``data.standardize`` the sum of squares in standardized units), ``global_step`` (a validate or
    predict run records its checkpoint's), ``seed``, ``lr``, ``accelerator``, the sizes,
    ``fit_seconds``, ``updates_per_step``, ``update_path`` (the path the fit took), ``dead_units``,
    the validation metrics when there are any (in the data's units), ``folds`` and ``fold`` for a run
    of one fold of a cross-validation, and ``diverged_at_step``.
    :func:`finish` adds ``signal``, ``resumed_from``, ``lr_search`` and ``versions``.
    """
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
    if isinstance(data, FileRegressionData) and data.folds is not None:  # one fold's run of a cross-validation
        metrics["folds"], metrics["fold"] = data.folds, data.fold
    if model.diverged_at is not None:
        metrics["diverged_at_step"] = model.diverged_at
    return metrics


def diverged_message(model: LitTwoLayerNet, lr_search: dict[str, Any] | None, global_step: int) -> str:
    """The line of a run whose loss became inf or nan: where, with which lr, and what to do."""
    return (
        f"training diverged: the loss became {model.last_loss} at step {model.diverged_at} with "
        f"optim.lr={model.hparams.lr:g}{' (picked by optim.lr=auto)' if lr_search else ''} and stopped at step "
        f"{global_step - 1}; use a smaller optim.lr (the seed's is 1e-6)"
    )


def versions(trainer: L.Trainer | None) -> dict[str, str]:
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


def strict_json(metrics: dict[str, Any]) -> dict[str, Any]:
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


def write_metrics(out: Path, metrics: dict[str, Any]) -> None:
    """metrics.json as strict JSON that any parser reads (see :func:`strict_json`); the caller keeps
    the metrics as they are, inf and nan included."""
    temp = out / f".{METRICS_FILE}.tmp"  # renamed into place: never a half-written metrics.json
    temp.write_text(json.dumps(strict_json(metrics), indent=2, allow_nan=False) + "\n")
    os.replace(temp, out / METRICS_FILE)
