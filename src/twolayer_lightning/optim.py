"""The seed's update as a ``torch.optim.Optimizer``: ``p -= lr * p.grad`` then ``p.grad.zero_()``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch


class InPlaceSGD(torch.optim.Optimizer):
    """Plain SGD that performs exactly the seed's in-place update, bit for bit.

    For each parameter ``p`` it runs ``p -= lr * p.grad`` under ``torch.no_grad()`` and then
    ``p.grad.zero_()``, the seed's section 三 loop. ``torch.optim.SGD`` computes
    ``p.add_(p.grad, alpha=-lr)`` instead, which rounds differently in float32 and drifts from
    the seed's weights (about 2e-6 after 500 steps of the default problem).

    Pass ``module.named_parameters()`` so that errors can name the parameter.

    Args:
        params: parameters or ``(name, parameter)`` pairs, or parameter groups.
        lr: the learning rate, a finite number > 0.

    Raises:
        ValueError: ``lr`` is not a finite number > 0.

    Example:
        >>> w = torch.ones(2, requires_grad=True)
        >>> opt = InPlaceSGD([w], lr=0.5)
        >>> (w * w).sum().backward()
        >>> _ = opt.step()
        >>> w, w.grad
        (tensor([0., 0.], requires_grad=True), tensor([0., 0.]))
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-6) -> None:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"InPlaceSGD: lr={lr!r} is not allowed; use a finite number > 0 (the seed uses 1e-6)")
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Run the closure (if any), then update every parameter in place and zero its gradient.

        Raises:
            RuntimeError: a parameter has no gradient, which is what rebinding a weight
                (``w = w - lr * w.grad``) instead of updating it in place leads to.
        """
        loss = None
        if closure is not None:
            # Lightning passes a closure that runs its before-step hooks; it needs autograd on.
            with torch.enable_grad():
                loss = closure()
        # Check every parameter before touching any, so a failed step leaves all weights as they were.
        missing = [
            name
            for group in self.param_groups
            for name, p in zip(_names(group), group["params"], strict=True)
            if p.grad is None
        ]
        if missing:
            raise RuntimeError(
                f"InPlaceSGD: parameter(s) {', '.join(map(repr, missing))} have no gradient (.grad is None). Call "
                "backward() on a loss that uses them before step(). Update weights in place (`w -= lr * w.grad` "
                "under torch.no_grad()): `w = w - lr * w.grad` rebinds the name to a new tensor whose .grad is "
                "None (a leaf with requires_grad=False inside no_grad, a non-leaf outside), and the optimizer "
                "keeps updating the old one"
            )
        self.update()
        return loss

    @torch.no_grad()
    def update(self) -> None:
        """The update alone, for a caller that has just run ``backward`` itself.

        No closure, no gradient check and none of ``torch.optim``'s step hooks or profiler
        records, which make :meth:`step` cost 55 us against 38 us for this at the seed's size on
        one CPU core. ``LitTwoLayerNet`` calls it on its direct path and captures it into a CUDA
        graph on its ``cuda_graph`` path.
        """
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                # The seed's update, written the same way so that it rounds the same way.
                p -= lr * p.grad
                p.grad.zero_()


def _names(group: dict[str, Any]) -> list[str]:
    """The parameters' names when the optimizer was given named_parameters(), else their positions."""
    return group.get("param_names") or [f"#{i}" for i in range(len(group["params"]))]
