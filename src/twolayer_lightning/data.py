"""The seed's synthetic regression data as a LightningDataModule (no Hydra)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import lightning as L
import torch


class SyntheticRegressionData(L.LightningDataModule):
    """``x ~ randn(N, D_in)`` and ``y ~ randn(N, D_out)``, served as one full batch per step.

    The tensors are drawn when the module is built, x first and then y, from ``generator``: build
    the data before the network from the same generator to follow the seed's draw order
    (x, y, w1, w2). The training loader repeats the full batch without end, as the seed's loop
    does; the Trainer's ``max_steps`` decides how many updates run.

    Args:
        num_samples: N, the rows of x and y (the seed's batch size, 64).
        in_features: D_in, the columns of x.
        out_features: D_out, the columns of y.
        generator: the random generator to draw from; the global one if None.
        dtype: dtype of x and y (the seed's ``torch.float``).

    Raises:
        ValueError: a size is not a positive integer.

    Example:
        >>> data = SyntheticRegressionData(64, 1000, 10, generator=torch.Generator().manual_seed(0))
        >>> x, y = next(iter(data.train_dataloader()))
        >>> tuple(x.shape), tuple(y.shape)
        ((64, 1000), (64, 10))
    """

    def __init__(
        self,
        num_samples: int = 64,
        in_features: int = 1000,
        out_features: int = 10,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        sizes = {"num_samples": num_samples, "in_features": in_features, "out_features": out_features}
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"SyntheticRegressionData: {name}={value!r} is not allowed; use a positive integer")
        self.x = torch.randn(num_samples, in_features, generator=generator, dtype=dtype)  # (N, D_in)
        self.y = torch.randn(num_samples, out_features, generator=generator, dtype=dtype)  # (N, D_out)

    def train_dataloader(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Every step sees the same full batch, so an endless repeat stands in for a DataLoader:
        # no per-step indexing or collation, and no epoch boundary every step.
        return itertools.repeat((self.x, self.y))
