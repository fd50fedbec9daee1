"""Typed schemas behind ``conf/config.yaml`` and the value checks Hydra's types cannot express.

Hydra validates names and types against these dataclasses (a typo or ``optim.lr=abc`` fails
there, naming the key); :func:`validate` then checks ranges and choices and reports every
problem at once, one line each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

ACCELERATORS = ("cpu", "gpu", "auto")
# Precisions the exact update can honour: the seed's float32, or float64 throughout.
PRECISIONS = ("32-true", "32", "64-true", "64")
LOGGERS = ("csv", "tensorboard", "none")


@dataclass
class DataConfig:
    num_samples: int = 64  # N: rows of x and y, all in one batch


@dataclass
class ModelConfig:
    in_features: int = 1000  # D_in
    hidden_features: int = 100  # H
    out_features: int = 10  # D_out
    activation: str = "clamp"  # clamp | function (the custom autograd Function)


@dataclass
class OptimConfig:
    lr: float = 1e-6  # learning rate of the in-place SGD update


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"  # cpu | gpu | auto
    devices: Any = 1  # number of devices, or "auto"
    max_steps: int = 500  # number of updates
    log_every_n_steps: int = 10  # console line and logger flush every this many steps
    precision: str = "32-true"  # 32-true | 64-true; mixed precisions are refused
    enable_progress_bar: bool = False  # Lightning's progress bar
    updates_per_step: int = 1  # seed updates per Lightning training step (same arithmetic, less overhead)
    checkpoint_every_n_steps: int = 0  # also save checkpoints/step-N.ckpt every N updates; 0: only last.ckpt


@dataclass
class Config:
    seed: int = 0  # seeds the generator that draws x, y, w1, w2 in that order
    output_dir: str = "${hydra:runtime.output_dir}"  # where the run writes its files
    logger: str = "csv"  # csv | tensorboard | none
    ckpt_path: str | None = None  # resume from this checkpoint (a last.ckpt or step-N.ckpt)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def register_configs() -> None:
    """Register the schema as ``schema`` in Hydra's ConfigStore (``conf/config.yaml`` extends it)."""
    ConfigStore.instance().store(name="schema", node=Config)


class ConfigError(ValueError):
    """One or more config values are out of range; ``problems`` holds one line per value."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def validate(cfg: Any, cuda_available: bool | None = None) -> None:
    """Check ranges and choices of a composed config, reporting every problem at once.

    Args:
        cfg: the composed config (a DictConfig of :class:`Config`).
        cuda_available: whether CUDA can be used; asks torch when None.

    Raises:
        ConfigError: one line per problem, each naming the key, the value and what is allowed.
    """
    problems: list[str] = []

    def positive_int(key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            problems.append(f"{key}={value!r} is not allowed: use a whole number > 0")

    def choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            problems.append(f"{key}={value!r} is not allowed: use one of {', '.join(allowed)}")

    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        problems.append(f"seed={cfg.seed!r} is not allowed: use a whole number >= 0")
    positive_int("data.num_samples", cfg.data.num_samples)
    positive_int("model.in_features", cfg.model.in_features)
    positive_int("model.hidden_features", cfg.model.hidden_features)
    positive_int("model.out_features", cfg.model.out_features)
    choice("model.activation", cfg.model.activation, ("clamp", "function"))
    lr = cfg.optim.lr
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        problems.append(f"optim.lr={lr!r} is not allowed: use a finite number > 0 (the seed uses 1e-6)")
    positive_int("trainer.max_steps", cfg.trainer.max_steps)
    positive_int("trainer.log_every_n_steps", cfg.trainer.log_every_n_steps)
    positive_int("trainer.updates_per_step", cfg.trainer.updates_per_step)
    every = cfg.trainer.checkpoint_every_n_steps
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        problems.append(f"trainer.checkpoint_every_n_steps={every!r} is not allowed: use a whole number >= 0")
    if cfg.ckpt_path is not None and not Path(cfg.ckpt_path).is_file():
        problems.append(f"ckpt_path={cfg.ckpt_path!r} is not a file: give the path of a .ckpt written by a run")
    devices = cfg.trainer.devices
    if devices != "auto":
        positive_int("trainer.devices", devices)
    choice("logger", cfg.logger, LOGGERS)
    if str(cfg.trainer.precision) not in PRECISIONS:
        problems.append(
            f"trainer.precision={cfg.trainer.precision!r} is not allowed: the exact update needs full "
            "precision; use 32-true (the seed's float32) or 64-true"
        )
    accelerator = cfg.trainer.accelerator
    choice("trainer.accelerator", accelerator, ACCELERATORS)
    if accelerator == "gpu":
        if cuda_available is None:
            import torch

            cuda_available = torch.cuda.is_available()
        if not cuda_available:
            problems.append(
                "trainer.accelerator='gpu' is not available: this torch sees no CUDA device; "
                "use trainer.accelerator=cpu (or auto, which picks a GPU when there is one)"
            )
    if problems:
        raise ConfigError(problems)
