"""The command line and ``run(overrides)``: compose the config, train it, and turn a user's mistake into one line.

``python train.py``, ``python -m twolayer_lightning`` and ``twolayer-train`` all call :func:`main`.
This module imports Hydra and the config schema only: torch and Lightning are loaded when a run
starts (:mod:`twolayer_lightning.training`), so a config mistake, ``--help`` and ``--cfg job`` are
answered before they load.
"""

from __future__ import annotations

import copy
import functools
import gc
import importlib
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from twolayer_lightning.config import register_configs, validate
from twolayer_lightning.errors import (
    ConfigError,
    DataError,
    DiskFullError,
    TrainingDivergedError,
    TrainingInterruptedError,
    UnsupportedLightningError,
    describe_error,
)
from twolayer_lightning.report import exit_if_no_job_ok, summarize_sweep
from twolayer_lightning.rundir import (
    FULL_ERROR_MARKER,
    METRICS_FILE,
    command,
    has_checkpoint,
    is_rank_zero,
    recorded_status,
    started_from_command_line,
    user_wants_tracebacks,
)

log = logging.getLogger(__name__)

CONFIG_MODULE = "twolayer_lightning.conf"
# What a job of a sweep may fail with, alone: one line in its log, +inf for the sweeper, the others go on.
JOB_ERRORS = (ConfigError, DataError, TrainingDivergedError, DiskFullError, UnsupportedLightningError)

register_configs()


def train_config(cfg: DictConfig) -> dict[str, Any]:
    """Check ``cfg``, then load torch and Lightning and train it (see ``training.train``)."""
    validate(cfg)  # a mistake is answered before the heavy imports
    from twolayer_lightning.training import train

    return train(cfg)


def _train_in_this_process(cfg: DictConfig) -> dict[str, Any]:
    """:func:`train_config` for the command line, whose process lives for its runs alone."""
    validate(cfg)
    _freeze_imported_objects()
    return train_config(cfg)


@functools.cache
def _freeze_imported_objects() -> None:
    """Import torch, Lightning and the training code once, then take what they made out of the collector's way.

    Those objects live as long as the process: frozen (``gc.freeze``), Python's full collections
    skip them and look at the run's own objects only. Not for ``run()``, which may share its
    process with a user's code.
    """
    importlib.import_module("twolayer_lightning.training")
    gc.freeze()


def objective(metrics: dict[str, Any]) -> float:
    """What a sweeper minimizes: the validation loss when there are validation rows, else the final train loss."""
    return metrics.get("val_loss", metrics["train_loss"])


def sweep_objective(job: Callable[[], dict[str, Any]]) -> float:
    """Run one job of a sweep: its :func:`objective`, or +inf (with one logged line) when it failed or diverged.

    Not nan: hydra-optuna-sweeper 1.3.0 ends the whole search at a nan (it tells Optuna the trial
    failed and then passes the nan again), while +inf is a value every sweeper takes and ranks
    last, so Optuna's sampler steers away from the settings that did it. An interrupted job
    raises on: a signal ends the whole sweep.
    """
    try:
        return objective(job())
    except JOB_ERRORS as err:
        log.error("job failed: %s", describe_error(err))
        return math.inf


def run(overrides: Sequence[str] = (), output_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Compose the packaged config with ``overrides`` and train it: for notebooks and other projects.

    A later call with the same overrides reuses the composed config (Hydra's composition is most of
    a short run's set-up), as long as the packaged config files are unchanged.

    Args:
        overrides: Hydra overrides, as on the command line, e.g. ``["optim.lr=2e-6"]``.
        output_dir: where the run writes its files; a new ``outputs/<date>/<time>`` below the
            current folder if None (as ``python train.py`` does).

    Returns:
        The metrics of ``twolayer_lightning.train``, and ``output_dir``: the run's folder, absolute.

    Raises:
        ConfigError: an unknown key, a bad value or a missing config group option, with the
            command line's line; as ``twolayer_lightning.train`` otherwise.

    Example:
        >>> metrics = run(["trainer.max_steps=3", "logger=none"], output_dir=getfixture("tmp_path"))
        >>> metrics["global_step"]
        3
    """
    if output_dir is None:
        output_dir = Path("outputs") / datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
    try:
        cfg = copy.deepcopy(_composed(tuple(overrides), _config_files_stamp()))  # train() gets a config of its own
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError([line.removeprefix("error: ") for line in describe_error(err).splitlines()]) from None
    cfg.output_dir = str(output_dir)
    return {**train_config(cfg), "output_dir": str(Path(output_dir).absolute())}


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The packaged config composed with ``overrides`` by Hydra (``output_dir`` left to the caller)."""
    with hydra.initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra.compose(config_name="config", overrides=list(overrides))


@functools.lru_cache(maxsize=32)
def _composed(overrides: tuple[str, ...], stamp: tuple[tuple[str, int], ...]) -> DictConfig:
    """:func:`compose`, kept for the same overrides and config files.

    Composing is most of a short run's set-up and gives the same config for the same overrides
    and files: ``stamp`` (:func:`_config_files_stamp`) makes an edited or added YAML file compose afresh.
    """
    return compose(overrides)


def _config_files_stamp() -> tuple[tuple[str, int], ...]:
    """Every packaged YAML file with its modification time, in nanoseconds."""
    root = Path(importlib.import_module(CONFIG_MODULE).__file__).parent
    return tuple((str(path), path.stat().st_mtime_ns) for path in sorted(root.rglob("*.yaml")))


def _kept_job(cfg: DictConfig) -> float | None:
    """A job of a sweep resumed in place (``ckpt_path=last``): its recorded objective when it had finished.

    A job that finished (``ok`` or ``diverged``) is kept as it is, not trained again; None for the
    others, which train: from their newest checkpoint, or afresh where they had saved none
    (never started, or stopped before their first checkpoint).
    """
    if cfg.ckpt_path != "last":
        return None
    out = Path(cfg.output_dir)
    status = recorded_status(out)
    if status in (None, "interrupted"):
        if not has_checkpoint(out):
            cfg.ckpt_path = None
        return None
    if status == "unreadable":
        return None  # the run's own checks say what is wrong with it
    metrics = json.loads((out / METRICS_FILE).read_text())
    log.info("job kept: it had finished (status %s) in %s; not trained again", status, out)
    value = metrics.get("val_loss", metrics.get("train_loss"))
    return math.inf if value is None or status != "ok" else float(value)


def _task(cfg: DictConfig) -> float:
    """The Hydra task: train, and return the :func:`objective` for sweepers (+inf for a failed sweep job)."""
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun and cfg.trainer.strategy == "ddp":
        # Lightning restarts the script for each DDP rank with the job's overrides, which a sweep's
        # jobs cannot take (Lightning #15737, Hydra #2070). SystemExit, not an exception: Hydra would
        # record that and start the next job; this ends the sweep at its first job, before training.
        # (A Hydra callback cannot refuse earlier: Hydra turns exceptions in callbacks into warnings.)
        err = ConfigError(
            [
                "trainer.strategy='ddp' cannot run inside a -m sweep: run each DDP job as its own "
                f"`{command() or 'python train.py'} trainer=ddp ...`, or sweep with one process per job"
            ]
        )
        print(describe_error(err), file=sys.stderr)
        raise SystemExit(2)
    try:
        if multirun:
            kept = _kept_job(cfg)
            return kept if kept is not None else sweep_objective(lambda: _train_in_this_process(cfg))
        return objective(_train_in_this_process(cfg))
    except TrainingInterruptedError as err:
        # A signal ends the whole sweep, not just this job: launch nothing more, but summarise
        # what ran (the SweepSummary callback would not run after this SystemExit).
        if multirun:
            log.error("job interrupted: %s", err)
            summarize_sweep(HydraConfig.get().sweep.dir)
        if user_wants_tracebacks():
            raise
        _say(f"error: {err}")
        raise SystemExit(err.exit_code) from None
    except JOB_ERRORS as err:
        if user_wants_tracebacks():
            raise
        # A single run ends here, before Hydra adds its "Error executing job" line and a traceback.
        _say(describe_error(err))
        raise SystemExit(2) from None


def _say(line: str) -> None:
    """A run's final error line on stderr, once: the extra processes of a DDP run end the same way, silently."""
    if is_rank_zero():
        print(line, file=sys.stderr)


def _hydra_main() -> None:
    hydra.main(version_base="1.3", config_path="conf", config_name="config")(_task)()


def main() -> None:
    """``python train.py [overrides]``: a user's mistake ends with one line and exit status 2.

    Set ``HYDRA_FULL_ERROR=1`` to see the full traceback instead.
    """
    full_error = user_wants_tracebacks()
    started_from_command_line(sys.argv[0])
    if not full_error:
        # With this set Hydra raises its errors instead of printing them with a traceback, so that
        # they can be shown here as one line. The marker tells it from a user's setting, also in
        # the DDP ranks that Lightning starts by running this command again with this environment.
        os.environ["HYDRA_FULL_ERROR"] = "1"
        os.environ[FULL_ERROR_MARKER] = "1"
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
    except (*JOB_ERRORS, HydraException, OmegaConfBaseException) as err:
        if full_error:
            raise
        print(describe_error(err), file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if not full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)
            os.environ.pop(FULL_ERROR_MARKER, None)
