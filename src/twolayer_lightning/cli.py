"""Composition and entry: ``train(cfg)``, ``run(overrides)`` and the Hydra command line.

This is the only module that knows Hydra. ``python train.py`` and ``python -m twolayer_lightning``
both call :func:`main`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from twolayer_lightning.config import Config, ConfigError, register_configs, validate
from twolayer_lightning.data import SyntheticRegressionData
from twolayer_lightning.module import LitTwoLayerNet

log = logging.getLogger(__name__)

CONFIG_MODULE = "twolayer_lightning.conf"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "last.ckpt"

register_configs()


class TrainingDivergedError(RuntimeError):
    """The training loss became inf or nan."""


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
    if (path / METRICS_FILE).exists():
        raise ConfigError(
            [f"output_dir={str(path)!r} already holds a finished run ({METRICS_FILE}); choose another output_dir"]
        )
    return path


def _make_logger(kind: str, out: Path) -> Any:
    if kind == "csv":
        return L.pytorch.loggers.CSVLogger(out, name="", version="csv")
    if kind == "tensorboard":
        return L.pytorch.loggers.TensorBoardLogger(out, name="", version="tensorboard")
    return False


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train the seed's network as the config says and write the run's files into ``cfg.output_dir``.

    With the default config this is the seed's section 三 script with ``torch.manual_seed(cfg.seed)``
    prepended, bit for bit: x, y, w1, w2 are drawn in that order from a generator seeded with
    ``cfg.seed``, and each of ``trainer.max_steps`` steps is the seed's update.

    Writes ``metrics.json``, ``last.ckpt`` (the final state) and the logger's files (the per-step
    loss in ``csv/metrics.csv`` by default).

    Args:
        cfg: a config composed from ``conf/config.yaml`` (see :func:`run` to compose one).

    Returns:
        The metrics written to ``metrics.json``: ``train_loss`` (the loss of the last step, the
        last number the seed prints), ``global_step``, ``seed``, ``lr``, ``accelerator``,
        ``fit_seconds`` and the model sizes.

    Raises:
        ConfigError: a value is out of range or the output dir holds a finished run; nothing
            has been written then.
        TrainingDivergedError: the loss became inf or nan; ``metrics.json`` records it.
    """
    validate(cfg)
    out = _output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    with _isolated_global_state():
        # One generator draws x, y, w1, w2 in the seed's order: the data first, then the weights.
        generator = torch.Generator().manual_seed(cfg.seed)
        data = SyntheticRegressionData(
            cfg.data.num_samples, cfg.model.in_features, cfg.model.out_features, generator=generator
        )
        model = LitTwoLayerNet(
            cfg.model.in_features,
            cfg.model.hidden_features,
            cfg.model.out_features,
            lr=cfg.optim.lr,
            activation=cfg.model.activation,
            generator=generator,
            updates_per_step=cfg.trainer.updates_per_step,
        )
        every = cfg.trainer.checkpoint_every_n_steps
        callbacks = []
        if every:
            callbacks.append(
                L.pytorch.callbacks.ModelCheckpoint(
                    dirpath=out / "checkpoints",
                    filename="step-{step}",  # no "=": the path must pass as a Hydra override
                    auto_insert_metric_name=False,
                    every_n_train_steps=every,
                    save_top_k=-1,
                )
            )
        trainer = L.Trainer(
            accelerator=cfg.trainer.accelerator,
            devices=cfg.trainer.devices,
            precision=cfg.trainer.precision,
            max_steps=cfg.trainer.max_steps,
            log_every_n_steps=cfg.trainer.log_every_n_steps,
            enable_progress_bar=cfg.trainer.enable_progress_bar,
            logger=_make_logger(cfg.logger, out),
            callbacks=callbacks,
            enable_checkpointing=bool(every),  # the final state is saved below in any case
            enable_model_summary=False,
            default_root_dir=out,
        )
        started = time.perf_counter()
        # weights_only: a checkpoint holds tensors and scalars only, so no pickled code is run.
        trainer.fit(model, datamodule=data, ckpt_path=cfg.ckpt_path, weights_only=True)
        fit_seconds = time.perf_counter() - started
        if model.diverged_at is None:
            trainer.save_checkpoint(out / CHECKPOINT_FILE, weights_only=False)  # full state: resumable
    metrics = {
        "status": "ok" if model.diverged_at is None else "diverged",
        "train_loss": model.last_loss,
        "global_step": trainer.global_step,
        "seed": cfg.seed,
        "lr": cfg.optim.lr,
        "accelerator": trainer.accelerator.__class__.__name__.removesuffix("Accelerator").lower(),
        "num_samples": cfg.data.num_samples,
        "in_features": cfg.model.in_features,
        "hidden_features": cfg.model.hidden_features,
        "out_features": cfg.model.out_features,
        "fit_seconds": fit_seconds,
    }
    if trainer.is_global_zero:
        # allow_nan: a diverged run records its inf/nan loss as JSON's Infinity/NaN.
        (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    if model.diverged_at is not None:
        raise TrainingDivergedError(
            f"training diverged: the loss became {model.last_loss} at step {model.diverged_at} with "
            f"optim.lr={cfg.optim.lr:g} and stopped at step {trainer.global_step - 1}; use a smaller optim.lr "
            "(the seed's is 1e-6)"
        )
    log.info(
        "done: %d steps, final loss %r, %.2f s in fit, files in %s",
        metrics["global_step"],
        metrics["train_loss"],
        fit_seconds,
        out,
    )
    return metrics


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
    """The Hydra task: train, and return the objective (the final train loss) for sweepers."""
    try:
        return train(cfg)["train_loss"]
    except (ConfigError, TrainingDivergedError) as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # In a sweep, one bad job must not end the others: log it, and give the sweeper nan.
            log.error("job failed: %s", describe_error(err))
            return math.nan
        # A single run ends here, before Hydra adds its "Error executing job" line and a traceback.
        print(describe_error(err), file=sys.stderr)
        raise SystemExit(2) from None


def describe_error(err: BaseException) -> str:
    """One line (or one per problem) for a user's mistake: what is wrong, the value, what to use."""
    if isinstance(err, ConfigError):
        return "\n".join(f"error: {problem}" for problem in err.problems)
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


def main() -> None:
    """``python train.py [overrides]``: a user's mistake ends with one line and exit status 2.

    Set ``HYDRA_FULL_ERROR=1`` to see the full traceback instead.
    """
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    # With this set Hydra raises its errors instead of printing them with a traceback, so that
    # they can be shown here as one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
    except (ConfigError, TrainingDivergedError, HydraException, OmegaConfBaseException) as err:
        if full_error:
            raise
        print(describe_error(err), file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if not full_error:
            del os.environ["HYDRA_FULL_ERROR"]
