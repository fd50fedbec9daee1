"""The seed's two-layer ReLU network as a plain ``nn.Module`` (no Lightning, no Hydra).

The tutorial names its sizes ``N, D_in, H, D_out``; here they are ``in_features`` (D_in),
``hidden_features`` (H) and ``out_features`` (D_out); N is the number of rows in a batch.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

Activation = Literal["clamp", "function"]
ACTIVATIONS: tuple[str, ...] = ("clamp", "function")
Init = Literal["seed", "scaled"]
INITS: tuple[str, ...] = ("seed", "scaled")
_SCALING = ("x_mean", "x_scale", "y_mean", "y_scale")  # the optional buffers of TwoLayerNet, in this order


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

    Standardization (optional, for a user's own data): after :meth:`set_scaling` the net holds the
    training rows' means and scales of x and y as buffers (so they travel in its ``state_dict`` and
    in checkpoints), and :meth:`forward` takes and returns the data's own units:
    ``seed_forward((x - x_mean) / x_scale) * y_scale + y_mean``. The weights are then trained by
    :meth:`seed_forward` on standardized rows. Without scaling, :meth:`forward` is
    :meth:`seed_forward`, with no extra operation.

    Args:
        in_features: D_in, the number of input features.
        hidden_features: H, the number of hidden ReLU units.
        out_features: D_out, the number of outputs.
        activation: ``"clamp"`` (the seed's ``clamp(min=0)``) or ``"function"``
            (the same ReLU as the custom autograd Function :class:`ClampReLU`).
        generator: the random generator that draws ``w1`` then ``w2``; the global one if None.
        dtype: dtype of the weights (the seed's ``torch.float``).
        init: ``"seed"``: ``randn`` (std 1), the seed's; ``"scaled"``: the same draws divided by
            ``sqrt(fan_in)`` (``sqrt(in_features)`` for ``w1``, ``sqrt(hidden_features)`` for
            ``w2``), so that standardized inputs give hidden and output values of about unit size.

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
        init: Init = "seed",
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
        if init not in INITS:
            raise ValueError(f"TwoLayerNet: init={init!r} is not allowed; use one of {', '.join(INITS)}")
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.out_features = out_features
        self.activation = activation
        self.init = init
        w1 = torch.randn(in_features, hidden_features, generator=generator, dtype=dtype)  # (D_in, H)
        w2 = torch.randn(hidden_features, out_features, generator=generator, dtype=dtype)  # (H, D_out)
        if init == "scaled":
            # The same draws, in the same order, shrunk so that each layer keeps unit-size values.
            w1, w2 = w1 / math.sqrt(in_features), w2 / math.sqrt(hidden_features)
        self.w1 = nn.Parameter(w1)
        self.w2 = nn.Parameter(w2)
        for name in _SCALING:
            # None: not in the state_dict until set_scaling (or a state_dict that has them) sets them.
            self.register_buffer(name, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions in the data's units for x in the data's units (see the class docstring)."""
        if self.x_mean is None:
            return self.seed_forward(x)
        y_pred = self.seed_forward((x - self.x_mean) / self.x_scale)  # (N, D_out), standardized units
        return y_pred * self.y_scale + self.y_mean

    def seed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The seed's ``x.mm(w1).clamp(min=0).mm(w2)``, in the units the weights are trained in."""
        h = x.mm(self.w1)  # (N, H)
        h_relu = h.clamp(min=0) if self.activation == "clamp" else ClampReLU.apply(h)  # (N, H)
        return h_relu.mm(self.w2)  # (N, D_out)

    @property
    def scaled(self) -> bool:
        """Whether the net standardizes its inputs and outputs (:meth:`set_scaling` was called)."""
        return self.x_mean is not None

    def set_scaling(
        self, x_mean: torch.Tensor, x_scale: torch.Tensor, y_mean: torch.Tensor, y_scale: torch.Tensor
    ) -> None:
        """Make :meth:`forward` work in the data's units: x is standardized in, y un-standardized out.

        Args:
            x_mean: ``(in_features,)``, the training rows' mean of each column of x.
            x_scale: ``(in_features,)``, their standard deviation (1 for a constant column).
            y_mean: ``(out_features,)``, the same for y.
            y_scale: ``(out_features,)``.

        Raises:
            ValueError: a tensor has another shape, or a scale is not finite and > 0.
        """
        values = dict(zip(_SCALING, (x_mean, x_scale, y_mean, y_scale), strict=True))
        for name, value in values.items():
            size = self.in_features if name.startswith("x") else self.out_features
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != (size,):
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"TwoLayerNet.set_scaling: {name} has shape {shape}; give a tensor of shape ({size},)")
            if name.endswith("scale") and not bool(torch.isfinite(value).all() and (value > 0).all()):
                raise ValueError(f"TwoLayerNet.set_scaling: {name} has values that are not finite and > 0")
        for name, value in values.items():
            setattr(self, name, value.detach().to(self.w1.device, self.w1.dtype).clone())

    def standardize_y(self, y: torch.Tensor) -> torch.Tensor:
        """y in the data's units as the net's output is trained on it (y itself without scaling)."""
        return y if self.x_mean is None else (y - self.y_mean) / self.y_scale

    def unstandardize_y(self, y: torch.Tensor) -> torch.Tensor:
        """:meth:`seed_forward`'s output (or a standardized y) in the data's units."""
        return y if self.x_mean is None else y * self.y_scale + self.y_mean

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A state_dict saved after set_scaling has the buffers; make room for them, so that a net built
        # with the same sizes loads it (also through Lightning's load_from_checkpoint).
        for name in _SCALING:
            key = prefix + name
            if getattr(self, name) is None and key in state_dict and isinstance(state_dict[key], torch.Tensor):
                setattr(self, name, torch.empty_like(state_dict[key], device=self.w1.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, hidden_features={self.hidden_features}, "
            f"out_features={self.out_features}, activation={self.activation!r}, init={self.init!r}, "
            f"scaled={self.scaled}"
        )


def sum_squared_error(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The seed's loss ``(y_pred - y).pow(2).sum()``: a sum, not a mean, over all N * D_out entries."""
    return (y_pred - y).pow(2).sum()


@torch.no_grad()
def live_rows_per_unit(x: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
    """For each hidden unit, the rows of ``x`` whose ReLU input is not negative ``(H,)``: a unit with 0 is
    dead (no gradient reaches it from these rows). One forward matmul."""
    return (x.mm(w1) >= 0).sum(dim=0)
