"""The seed's update as a ``torch.optim.Optimizer`` (``p -= lr * p.grad`` then ``p.grad.zero_()``),
the same update with the gradients written out (:func:`handwritten_update`) and for many networks
at once (:func:`stacked_update`), and :func:`search_lr`, which picks its lr for a user's data
(``optim.lr=auto``)."""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)


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
        records, which cost a visible share of :meth:`step` at the seed's size (benchmarks/README.md).
        ``LitTwoLayerNet`` calls it on its direct path and captures it into a CUDA
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


# --- optim.lr=auto: a range test of many learning rates at once --------------------------------

# Candidate learning rates times the rows per update: the seed's loss is a sum over rows, so the lr
# that fits scales as 1 / rows. 10^-3 .. 10^-1/3 per row, 3 per decade: on standardized tables with
# the scaled init (diabetes, linnerud, Friedman 1-3, make_regression) the best lies inside, and the
# largest ones diverge.
LR_PER_ROW_GRID: tuple[float, ...] = tuple(10 ** (k / 3) for k in range(-9, 0))
# Multiply-adds one step of the range test may cost before the step count is cut: below about this
# much, a step costs the same whatever its size (launch and Python overhead on a CPU core).
_OVERHEAD_WORK = 2_000_000


def search_lr(
    x: torch.Tensor,
    y: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    steps: int,
    batch_size: int | None = None,
    seed: int = 0,
    held_out_fraction: float = 0.2,
    lr_per_row: Sequence[float] = LR_PER_ROW_GRID,
    progress: Callable[[int, int, float], None] | None = None,
    progress_seconds: float = 5.0,
) -> dict[str, Any]:
    """Pick the seed update's learning rate for x and y by training every candidate at once.

    Plain torch. Each candidate starts from ``w1``, ``w2`` as one member of a stack (:class:`_RangeTest`)
    trained on the fit's batches; the lowest loss on the ``held_out_fraction`` of rows held out (seeded)
    wins if it stays finite trained on all of ``x`` (:func:`_stable_pick`), else the next best does. With
    fewer than 5 rows none is held out: they are scored on the rows they trained on.

    Args:
        x, y: the training rows ``(N, D_in)``, ``(N, D_out)``, as the fit sees them (standardized).
        w1, w2: the fit's initial weights; seed: seeds the held-out rows and the mini-batch order.
        steps: the fit's number of updates; batch_size: its mini-batch rows (None: the full batch).
        held_out_fraction: the share of rows held out to score the candidates.
        lr_per_row: the candidates, as lr times rows per update.
        progress: called as ``progress(steps done, steps in all, seconds left)`` every
            ``progress_seconds`` (e.g. :func:`log_progress`); it sees no tensor, so the result is the same.

    Returns:
        ``lr``, ``candidates`` (the fit's lrs), ``held_out_mse`` (None: diverged), ``steps`` (the test's),
        ``fit_rows``, ``held_out_rows``, ``scored_on``, ``skipped_as_diverging_on_all_rows``: in words by
        :func:`describe_search`.

    Raises:
        ValueError: every member diverged.
    """
    n = len(x)
    held, fit = _held_out_split(n, held_out_fraction, seed)
    test = _RangeTest(x[fit], y[fit], w1, w2, lr_per_row, batch_size)
    test_steps = test.run(steps, seed, progress, progress_seconds)
    scores = [value if math.isfinite(value) else None for value in test.mse(x[held], y[held])]
    finite = [(value, i) for i, value in enumerate(scores) if value is not None]
    candidates = [c / (n if batch_size is None else min(batch_size, n)) for c in lr_per_row]  # per the fit's update
    if not finite:
        raise ValueError(
            f"search_lr: every candidate lr ({candidates[0]:.3g} to {candidates[-1]:.3g}) diverged; "
            "standardize the data, or give an lr"
        )
    best, skipped = _stable_pick(x, y, w1, w2, lr_per_row, batch_size, seed, steps, sorted(finite))
    return {
        "lr": candidates[best],
        "candidates": candidates,
        "held_out_mse": scores,
        "steps": test_steps,
        "fit_rows": len(fit),
        "held_out_rows": len(held) if held is not fit else 0,
        "scored_on": "held_out_rows" if held is not fit else "fit_rows",
        "skipped_as_diverging_on_all_rows": [candidates[i] for i in skipped],
    }


def _stable_pick(
    x: torch.Tensor,
    y: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    lr_per_row: Sequence[float],
    batch_size: int | None,
    seed: int,
    steps: int,
    ranked: list[tuple[float, int]],
) -> tuple[int, list[int]]:
    """(the best-scored candidate that stays finite trained on all of x, the better ones that did not).

    The best held-out score on a smooth table is the largest lr that did not diverge, at the edge of
    stability; the fit trains on all rows, and crossed that edge (a 456-row table: 4.72e-4 diverged
    at step 9). So the ranked candidates are trained again on all of x, for the fit's steps (or as
    many as :meth:`_RangeTest.run` allows): only then is
    the pick known to hold for the fit's own rows (or a fold's). Where the winner holds, it is kept.
    """
    check = _RangeTest(x, y, w1, w2, [lr_per_row[i] for _, i in ranked], batch_size)
    check.run(steps, seed, None, math.inf)
    finite = [math.isfinite(value) for value in check.mse(x, y)]
    if not any(finite):
        raise ValueError("search_lr: every candidate lr that held on the test's rows diverged on all rows; give an lr")
    first = finite.index(True)
    return ranked[first][1], [i for _, i in ranked[:first]]


def _held_out_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out rows, rows to fit), drawn with ``seed``; with fewer than 5 rows both are all the rows."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    num_held = round(fraction * n) if n >= 5 else 0
    return (order[:num_held], order[num_held:]) if num_held else (order, order)


class _RangeTest:
    """:func:`search_lr`'s members: every candidate's weights stacked, trained together on the rows to fit.

    Because the seed's loss sums over rows, a candidate is given as an lr per row: the fit's lr is
    that divided by the rows of one of the fit's updates (all of x, or ``batch_size``), and the
    members here use it divided by the rows of theirs.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        w1: torch.Tensor,
        w2: torch.Tensor,
        lr_per_row: Sequence[float],
        batch_size: int | None,
    ) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.rows = len(x) if batch_size is None else min(batch_size, len(x))  # rows per update, here
        self.members = len(lr_per_row)
        self.member_work = self.rows * (w1.shape[0] + w2.shape[1]) * w1.shape[1]  # multiply-adds of one forward
        self.lr = torch.tensor([c / self.rows for c in lr_per_row], dtype=x.dtype, device=x.device).view(-1, 1, 1)
        self.w1 = w1.detach().expand(self.members, -1, -1).clone()  # (K, D_in, H)
        self.w2 = w2.detach().expand(self.members, -1, -1).clone()  # (K, H, D_out)

    def run(self, fit_steps: int, seed: int, progress: Callable[[int, int, float], None] | None, every: float) -> int:
        """Stacked updates on the fit's batches, calling ``progress`` every ``every`` seconds; returns how many.

        As many as the fit's ``fit_steps`` when one stacked step costs about what one of the fit's does
        (small tables, where each step's cost is overhead), fewer (at least 10) when it costs more.
        """
        cut = max(_OVERHEAD_WORK, self.members * self.member_work) / max(_OVERHEAD_WORK, self.member_work)
        steps = max(min(fit_steps, 10), min(fit_steps, int(fit_steps / cut)))
        batches = _batches(len(self.x), self.batch_size, seed, self.x.device)
        started = reported = time.perf_counter()
        for step in range(steps):
            rows = next(batches)
            xb, yb = (self.x, self.y) if rows is None else (self.x[rows], self.y[rows])
            stacked_update(self.w1, self.w2, xb, yb, self.lr)
            now = time.perf_counter()
            if progress is not None and now - reported >= every:
                reported = now
                progress(step + 1, steps, (now - started) / (step + 1) * (steps - step - 1))
        return steps

    @torch.no_grad()
    def mse(self, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        """Each member's mean squared error on ``x``, ``y`` (inf or nan for one that diverged)."""
        y_pred = torch.matmul(x, self.w1).clamp(min=0).bmm(self.w2)  # (K, N, D_out)
        return (y_pred - y).pow(2).mean(dim=(1, 2)).tolist()


def log_progress(done: int, total: int, seconds_left: float) -> None:
    """A ``progress`` for :func:`search_lr`: one info line, ``range test: k of n steps, about T s left``."""
    log.info("range test: %d of %d steps, about %.0f s left", done, total, seconds_left)


def describe_search(found: dict[str, Any]) -> str:
    """The record of :func:`search_lr` in words: the lr it picked, how it scored, and every candidate's score."""
    if found.get("scored_on") == "fit_rows":
        scored = "scored on those same rows, as fewer than 5 leave none to hold out; their MSE"
    else:
        scored = f"scored on {found['held_out_rows']} held-out ones; held-out MSE"
    scores = ", ".join(
        f"{lr:.3g}: {'diverged' if mse is None else f'{mse:.4g}'}"
        for lr, mse in zip(found["candidates"], found["held_out_mse"], strict=True)
    )
    test = f"range test: {found['steps']} steps on {found['fit_rows']} training rows"
    skipped = found.get("skipped_as_diverging_on_all_rows")
    margin = (
        f"; skipped as diverging on all training rows: {', '.join(f'{lr:.3g}' for lr in skipped)}" if skipped else ""
    )
    return f"lr {found['lr']:.3g} ({test}, {scored} by lr: {scores}{margin})"


@torch.no_grad()
def stacked_update(
    w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's update for K networks at once, in place: one batched kernel per operation for all of them.

    The seed's tensor section (forward, then the gradients of the summed loss written out: no
    autograd, half the kernels), with ``bmm`` over the stacked weights and ``w -= lr * grad`` with
    each member's lr. Not bitwise equal to K separate updates: ``bmm`` may sum in another order
    than ``mm``.

    Args:
        w1: ``(K, D_in, H)``, updated in place.
        w2: ``(K, H, D_out)``, updated in place.
        x: ``(N, D_in)`` shared by all members, or ``(K, N, D_in)`` one batch each.
        y: ``(N, D_out)`` or ``(K, N, D_out)``.
        lr: ``(K, 1, 1)``, each member's learning rate.

    Returns:
        Each member's loss ``(K,)`` and predictions ``(K, N, D_out)``, from before the update.
    """
    h = torch.matmul(x, w1)  # (K, N, H)
    h_relu = h.clamp(min=0)  # (K, N, H)
    y_pred = h_relu.bmm(w2)  # (K, N, D_out)
    diff = y_pred - y  # (K, N, D_out)
    loss = diff.pow(2).sum(dim=(1, 2))  # (K,)
    grad_y_pred = 2.0 * diff  # (K, N, D_out)
    grad_w2 = h_relu.transpose(1, 2).bmm(grad_y_pred)  # (K, H, D_out)
    grad_h = torch.where(h < 0, 0.0, grad_y_pred.bmm(w2.transpose(1, 2)))  # (K, N, H)
    grad_w1 = torch.matmul(x.transpose(-1, -2), grad_h)  # (K, D_in, H)
    w1 -= lr * grad_w1  # the seed's update, one lr per member
    w2 -= lr * grad_w2
    return loss, y_pred


def handwritten_update(
    w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr1: float, lr2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One seed update with the gradients written out (section 二), in place; returns the loss and predictions.

    Each line is the operation autograd's backward runs for this net, on the same operands in the
    same order, so the weights are bitwise those of the autograd update (the ``"handwritten"``
    update path of :class:`~twolayer_lightning.module.LitTwoLayerNet`). ``w1`` and ``w2`` are
    updated in place and must not require grad: pass ``weight.detach()`` (the same storage, so the
    parameter changes with it), which also spares a ``no_grad`` context per update.
    """
    h = x.mm(w1)  # (N, H)
    h_relu = h.clamp(min=0)  # (N, H)
    y_pred = h_relu.mm(w2)  # (N, D_out)
    diff = y_pred - y  # (N, D_out)
    loss = diff.pow(2).sum()
    grad_y_pred = 2.0 * diff  # (N, D_out)
    grad_w2 = h_relu.t().mm(grad_y_pred)  # (H, D_out)
    grad_h = grad_y_pred.mm(w2.t())  # (N, H)
    # The ReLU's backward (clamp's and ClampReLU's alike): the seed's `grad_h[h < 0] = 0`, the same
    # values, as one kernel without an index step.
    grad_h = torch.where(h < 0, 0.0, grad_h)
    grad_w1 = x.t().mm(grad_h)  # (D_in, H)
    w1 -= lr1 * grad_w1
    w2 -= lr2 * grad_w2
    return loss, y_pred


def _batches(num_rows: int, batch_size: int | None, seed: int, device: torch.device) -> Iterator[torch.Tensor | None]:
    """None (the full batch) forever, or seeded mini-batches of row indices, reshuffled every epoch."""
    if batch_size is None:
        yield from itertools.repeat(None)
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield from torch.randperm(num_rows, generator=generator).to(device).split(batch_size)
