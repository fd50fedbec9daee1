"""The PyTorch tutorial's two-layer ReLU net in Lightning, equal bit for bit to the raw loop it comes from.

Layers, from plain torch up: :class:`TwoLayerNet` and :class:`ClampReLU` (torch only),
:class:`InPlaceSGD` (the seed's update as an optimizer), :class:`SyntheticRegressionData`,
:class:`FileRegressionData` and :class:`LitTwoLayerNet` (Lightning, no Hydra), and
:func:`train` / :func:`run` (Hydra config).
"""

from twolayer_lightning.cli import TrainingDivergedError, TrainingInterruptedError, run, train
from twolayer_lightning.config import ConfigError
from twolayer_lightning.data import DataError, FileRegressionData, SyntheticRegressionData, load_regression_arrays
from twolayer_lightning.model import ClampReLU, TwoLayerNet
from twolayer_lightning.module import LitTwoLayerNet
from twolayer_lightning.optim import InPlaceSGD
from twolayer_lightning.report import SweepSummary, plot_run, summarize_sweep

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
