"""The seed's two-layer ReLU network as a plain ``nn.Module`` (no Lightning, no Hydra).

The tutorial names its sizes ``N, D_in, H, D_out``; here they are ``in_features`` (D_in),
``hidden_features`` (H) and ``out_features`` (D_out); N is the number of rows in a batch.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Activation = Literal["clamp", "function"]
ACTIVATIONS: tuple[str, ...] = ("clamp", "function")


class ClampReLU(torch.autograd.Function):
    """The ReLU written as a custom autograd Function: the tutorial's next step after autograd.

    Forward is ``input.clamp(min=0)``; backward passes the gradient through where the input was
    non-negative and zeroes it where the input was negative, exactly like the seed's hand-written
    ``grad_h[h < 0] = 0``. Training with it is bitwise equal to training with ``clamp``.

    Example:
        >>> x = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
        >>> ClampReLU.apply(x).sum().backward()
        >>> x.grad
        tensor([0., 1., 1.])
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, input: torch.Tensor) -> torch.Tensor:
        # Keep the input: backward needs to know where it was negative.
        ctx.save_for_backward(input)
        return input.clamp(min=0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor) -> torch.Tensor:
        (input,) = ctx.saved_tensors
        grad_input = grad_output.clone()
        grad_input[input < 0] = 0
        return grad_input


class TwoLayerNet(nn.Module):
    """``y_pred = x.mm(w1).clamp(min=0).mm(w2)``, the seed's network, with the seed's weight layout.

    ``w1`` is (in_features, hidden_features) and ``w2`` is (hidden_features, out_features), used
    with ``mm`` as in the seed. ``nn.Linear`` stores the transpose and runs a different kernel,
    which is not bitwise equal, so it is not used here. Weights are drawn with ``torch.randn``
    like the seed; pass the generator that drew the data to reproduce the seed's draw order
    (x, y, w1, w2).

    Args:
        in_features: D_in, the number of input features.
        hidden_features: H, the number of hidden ReLU units.
        out_features: D_out, the number of outputs.
        activation: ``"clamp"`` (the seed's ``clamp(min=0)``) or ``"function"``
            (the same ReLU as the custom autograd Function :class:`ClampReLU`).
        generator: the random generator that draws ``w1`` then ``w2``; the global one if None.
        dtype: dtype of the weights (the seed's ``torch.float``).

    Raises:
        ValueError: a size is not a positive integer, or the activation is unknown.

    Example:
        >>> net = TwoLayerNet(1000, 100, 10, generator=torch.Generator().manual_seed(0))
        >>> net(torch.randn(64, 1000)).shape
        torch.Size([64, 10])
    """

    def __init__(
        self,
        in_features: int = 1000,
        hidden_features: int = 100,
        out_features: int = 10,
        activation: Activation = "clamp",
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        sizes = {"in_features": in_features, "hidden_features": hidden_features, "out_features": out_features}
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"TwoLayerNet: {name}={value!r} is not allowed; use a positive integer")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"TwoLayerNet: activation={activation!r} is not allowed; use one of {', '.join(ACTIVATIONS)}"
            )
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.out_features = out_features
        self.activation = activation
        self.w1 = nn.Parameter(torch.randn(in_features, hidden_features, generator=generator, dtype=dtype))
        self.w2 = nn.Parameter(torch.randn(hidden_features, out_features, generator=generator, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.mm(self.w1)  # (N, H)
        h_relu = h.clamp(min=0) if self.activation == "clamp" else ClampReLU.apply(h)  # (N, H)
        return h_relu.mm(self.w2)  # (N, D_out)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, hidden_features={self.hidden_features}, "
            f"out_features={self.out_features}, activation={self.activation!r}"
        )


def sum_squared_error(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The seed's loss ``(y_pred - y).pow(2).sum()``: a sum, not a mean, over all N * D_out entries."""
    return (y_pred - y).pow(2).sum()
