"""The PyTorch tutorial's two-layer ReLU net in Lightning, equal bit for bit to the raw loop it comes from.

Layers, from plain torch up: :class:`TwoLayerNet` and :class:`ClampReLU` (torch only),
:class:`InPlaceSGD` (the seed's update as an optimizer), :class:`SyntheticRegressionData` and
:class:`LitTwoLayerNet` (Lightning, no Hydra), and :func:`train` / :func:`run` (Hydra config).
"""

from twolayer_lightning.cli import TrainingDivergedError, run, train
from twolayer_lightning.config import ConfigError
from twolayer_lightning.data import SyntheticRegressionData
from twolayer_lightning.model import ClampReLU, TwoLayerNet
from twolayer_lightning.module import LitTwoLayerNet
from twolayer_lightning.optim import InPlaceSGD

__all__ = [
    "ClampReLU",
    "ConfigError",
    "InPlaceSGD",
    "LitTwoLayerNet",
    "SyntheticRegressionData",
    "TrainingDivergedError",
    "TwoLayerNet",
    "run",
    "train",
]
