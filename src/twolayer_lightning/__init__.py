"""The PyTorch tutorial's two-layer ReLU net in Lightning, equal bit for bit to the raw loop it comes from.

Layers, from plain torch up: :class:`TwoLayerNet` and :class:`ClampReLU` (torch only),
:class:`InPlaceSGD` (the seed's update as an optimizer), :class:`SyntheticRegressionData`,
:class:`FileRegressionData` and :class:`LitTwoLayerNet` (Lightning, no Hydra), and
:func:`train` / :func:`run` (Hydra config).

Each name is imported from its module on first use (PEP 562), so ``import twolayer_lightning.model``
loads torch alone, and the command line answers a config mistake before torch loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Each public name -> the module that defines it.
_MODULES = {
    "ClampReLU": "model",
    "ConfigError": "errors",
    "DataError": "errors",
    "FileRegressionData": "data",
    "InPlaceSGD": "optim",
    "LitTwoLayerNet": "module",
    "SweepSummary": "report",
    "SyntheticRegressionData": "data",
    "TrainingDivergedError": "errors",
    "TrainingInterruptedError": "errors",
    "TwoLayerNet": "model",
    "load_regression_arrays": "data",
    "plot_run": "report",
    "run": "cli",
    "summarize_sweep": "report",
    "train": "training",
}

__all__ = [
    "ClampReLU",
    "ConfigError",
    "DataError",
    "FileRegressionData",
    "InPlaceSGD",
    "LitTwoLayerNet",
    "SweepSummary",
    "SyntheticRegressionData",
    "TrainingDivergedError",
    "TrainingInterruptedError",
    "TwoLayerNet",
    "load_regression_arrays",
    "plot_run",
    "run",
    "summarize_sweep",
    "train",
]

if TYPE_CHECKING:
    from twolayer_lightning.cli import run
    from twolayer_lightning.data import FileRegressionData, SyntheticRegressionData, load_regression_arrays
    from twolayer_lightning.errors import ConfigError, DataError, TrainingDivergedError, TrainingInterruptedError
    from twolayer_lightning.model import ClampReLU, TwoLayerNet
    from twolayer_lightning.module import LitTwoLayerNet
    from twolayer_lightning.optim import InPlaceSGD
    from twolayer_lightning.report import SweepSummary, plot_run, summarize_sweep
    from twolayer_lightning.training import train


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'twolayer_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"twolayer_lightning.{_MODULES[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
