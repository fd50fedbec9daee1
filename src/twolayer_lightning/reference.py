"""The seed's training loops as plain functions: the oracle the package is checked against.

The seed (the PyTorch tutorial's two-layer ReLU net, as retold by a Chinese blog post) trains
the same network three ways; each is one function here, written as the seed writes it:

- :func:`numpy_loop`: section 一, numpy with hand-written backprop.
- :func:`tensor_loop`: section 二, torch tensors with hand-written backprop.
- :func:`autograd_loop`: section 三, ``loss.backward()`` and the in-place update under
  ``torch.no_grad()``.
- :func:`function_loop`: section 三 with the ReLU as a custom autograd Function
  (:class:`MyReLU`, the tutorial's next step that the seed's 总结 mentions).

This module imports nothing from ``twolayer_lightning`` on purpose: an oracle that shared code
with the package could share its bugs.

The tutorial's ``N, D_in, H, D_out`` are ``num_samples, in_features, hidden_features,
out_features`` here. Run a loop from the command line as the seed does, printing ``t loss``::

    python -m twolayer_lightning.reference autograd --steps 500 --every 50

Example:
    >>> result = autograd_loop(num_samples=8, in_features=5, hidden_features=4, out_features=2, lr=1e-3, steps=3)
    >>> len(result.losses), tuple(result.w1.shape), tuple(result.w2.shape)
    (3, (5, 4), (4, 2))
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, NoReturn, TypeVar

import numpy as np
import torch

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

# Called with (t, loss) where the seed prints them; None prints nothing.
StepCallback = Callable[[int, float], None]

NUMPY_DTYPES: dict[str, type[np.floating]] = {"float32": np.float32, "float64": np.float64}
TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class LoopResult(Generic[ArrayT]):
    """What a loop computed.

    Attributes:
        losses: the loss of every step, in step order t = 0 .. steps - 1: the numbers the seed
            prints. Step t's loss is computed before step t's update, so the last entry is the
            loss of the weights after steps - 1 updates.
        w1: the final (in_features, hidden_features) weight, after all ``steps`` updates.
        w2: the final (hidden_features, out_features) weight.
    """

    losses: list[float]
    w1: ArrayT
    w2: ArrayT


def initial_tensors(
    seed: int = 0,
    num_samples: int = 64,
    in_features: int = 1000,
    hidden_features: int = 100,
    out_features: int = 10,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw the seed's x, y, w1, w2 on the CPU, in the seed's order, from a generator seeded with ``seed``.

    This equals ``torch.manual_seed(seed)`` followed by the seed's four ``torch.randn`` lines on
    the CPU, without touching the global random state. The draws are made on the CPU even for a
    GPU run, because a CUDA generator draws different numbers from the same seed.

    Args:
        seed: seeds the generator.
        num_samples: N, the rows of x and y.
        in_features: D_in.
        hidden_features: H.
        out_features: D_out.
        dtype: the dtype to draw in (the seed's ``torch.float``); float64 draws other numbers.

    Returns:
        ``(x, y, w1, w2)`` shaped (N, D_in), (N, D_out), (D_in, H), (H, D_out).
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, in_features, generator=generator, dtype=dtype)  # (N, D_in)
    y = torch.randn(num_samples, out_features, generator=generator, dtype=dtype)  # (N, D_out)
    w1 = torch.randn(in_features, hidden_features, generator=generator, dtype=dtype)  # (D_in, H)
    w2 = torch.randn(hidden_features, out_features, generator=generator, dtype=dtype)  # (H, D_out)
    return x, y, w1, w2


def _torch_start(
    initial: Sequence[torch.Tensor] | None,
    seed: int,
    sizes: tuple[int, int, int, int],
    device: torch.device | str,
    dtype: torch.dtype,
) -> list[torch.Tensor]:
    """The four starting tensors on ``device``: ``initial`` if given, else drawn from ``seed``."""
    if initial is None:
        initial = initial_tensors(seed, *sizes, dtype=dtype)
    if len(initial) != 4:
        raise ValueError(f"initial must be (x, y, w1, w2); got {len(initial)} tensors")
    # clone: .to() returns the same tensor when nothing changes, and the update must not write into the caller's.
    return [t.to(device=device, dtype=dtype).clone() for t in initial]


def numpy_gradients(
    x: np.ndarray, y: np.ndarray, w1: np.ndarray, w2: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seed's section 一 forward and hand-written backward pass, in numpy.

    Args:
        x: (N, D_in) inputs.
        y: (N, D_out) targets.
        w1: (D_in, H) first weight.
        w2: (H, D_out) second weight.

    Returns:
        ``(loss, grad_w1, grad_w2)``: the 0-d loss ``sum((relu(x @ w1) @ w2 - y) ** 2)`` and its
        gradients with respect to w1 (D_in, H) and w2 (H, D_out), in the inputs' dtype.
    """
    # Forward: compute the prediction y_pred.
    h = x.dot(w1)  # (N, H)
    h_relu = np.maximum(h, 0)  # (N, H)
    y_pred = h_relu.dot(w2)  # (N, D_out)

    loss = np.square(y_pred - y).sum()  # ()

    # Backward: the chain rule by hand, from the loss back to w2 and w1.
    grad_y_pred = 2.0 * (y_pred - y)  # (N, D_out)
    grad_w2 = h_relu.T.dot(grad_y_pred)  # (H, D_out)
    grad_h_relu = grad_y_pred.dot(w2.T)  # (N, H)
    grad_h = grad_h_relu.copy()  # (N, H)
    grad_h[h < 0] = 0  # relu passes no gradient where its input was negative
    grad_w1 = x.T.dot(grad_h)  # (D_in, H)
    return loss, grad_w1, grad_w2


def _numpy_start(
    sizes: tuple[int, int, int, int],
    seed: int,
    dtype: str | type[np.floating] | np.dtype,
    initial: Sequence[np.ndarray] | None,
) -> tuple[np.ndarray, ...]:
    """:func:`numpy_loop`'s ``(x, y, w1, w2)``: ``initial`` copied, or drawn from ``seed``, as ``dtype``."""
    num_samples, in_features, hidden_features, out_features = sizes
    try:
        np_dtype = NUMPY_DTYPES[np.dtype(dtype).name]  # accepts "float32", np.float32 and np.dtype alike
    except (TypeError, KeyError):
        raise ValueError(f"dtype={dtype!r} is not allowed; use one of {', '.join(NUMPY_DTYPES)}") from None
    if initial is None:
        rng = np.random.default_rng(seed)
        # Drawn in float64 like the seed's np.random.randn, then rounded, so both dtypes start alike.
        initial = (
            rng.standard_normal((num_samples, in_features)),  # x (N, D_in)
            rng.standard_normal((num_samples, out_features)),  # y (N, D_out)
            rng.standard_normal((in_features, hidden_features)),  # w1 (D_in, H)
            rng.standard_normal((hidden_features, out_features)),  # w2 (H, D_out)
        )
    if len(initial) != 4:
        raise ValueError(f"initial must be (x, y, w1, w2); got {len(initial)} arrays")
    # np.array copies: the loop's in-place update must not write into the caller's arrays.
    x, y, w1, w2 = (np.array(a, dtype=np_dtype) for a in initial)
    return x, y, w1, w2


def numpy_loop(
    num_samples: int = 64,
    in_features: int = 1000,
    hidden_features: int = 100,
    out_features: int = 10,
    lr: float = 1e-6,
    steps: int = 500,
    seed: int = 0,
    dtype: str | type[np.floating] | np.dtype = "float64",
    initial: Sequence[np.ndarray] | None = None,
    on_step: StepCallback | None = None,
) -> LoopResult[np.ndarray]:
    """The seed's section 一: numpy, hand-written backprop, in-place update ``w -= lr * grad``.

    Args:
        num_samples: N, the rows of x and y.
        in_features: D_in.
        hidden_features: H.
        out_features: D_out.
        lr: the learning rate (the seed's 1e-6).
        steps: the number of updates (the seed's 500).
        seed: seeds ``numpy.random.default_rng`` when ``initial`` is None. The seed's script
            draws from numpy's unseeded global generator instead, so its numbers are not
            reproducible at all.
        dtype: float64 (what the seed's ``np.random.randn`` gives) or float32, as a name or a
            numpy type.
        initial: ``(x, y, w1, w2)`` to start from instead of drawing them, e.g. the torch
            loops' tensors as numpy arrays; they are converted to ``dtype`` and copied.
        on_step: called with ``(t, loss)`` where the seed prints them.

    Returns:
        Every step's loss and the final weights as numpy arrays of ``dtype``.

    Raises:
        ValueError: ``dtype`` is not float32 or float64, or ``initial`` is not four arrays.
    """
    x, y, w1, w2 = _numpy_start((num_samples, in_features, hidden_features, out_features), seed, dtype, initial)
    learning_rate = lr
    losses: list[float] = []
    for t in range(steps):
        loss, grad_w1, grad_w2 = numpy_gradients(x, y, w1, w2)
        losses.append(float(loss))
        if on_step is not None:
            on_step(t, losses[-1])

        # Update the weights in place. NumPy keeps float32 here: a Python float does not upcast.
        w1 -= learning_rate * grad_w1
        w2 -= learning_rate * grad_w2
    return LoopResult(losses, w1, w2)


def tensor_gradients(
    x: torch.Tensor, y: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The seed's section 二 forward and hand-written backward pass, with torch tensors.

    Args:
        x: (N, D_in) inputs.
        y: (N, D_out) targets.
        w1: (D_in, H) first weight.
        w2: (H, D_out) second weight.

    Returns:
        ``(loss, grad_w1, grad_w2)``: the 0-d loss and its gradients with respect to w1 and w2,
        on the inputs' device and in their dtype.
    """
    # Forward pass.
    h = x.mm(w1)  # (N, H)
    h_relu = h.clamp(min=0)  # (N, H)
    y_pred = h_relu.mm(w2)  # (N, D_out)

    loss = (y_pred - y).pow(2).sum()  # ()

    # Backward pass, by hand: the same chain rule as the numpy version, with torch's names.
    grad_y_pred = 2.0 * (y_pred - y)  # (N, D_out)
    grad_w2 = h_relu.t().mm(grad_y_pred)  # (H, D_out)
    grad_h_relu = grad_y_pred.mm(w2.t())  # (N, H)
    grad_h = grad_h_relu.clone()  # (N, H)
    grad_h[h < 0] = 0  # relu passes no gradient where its input was negative
    grad_w1 = x.t().mm(grad_h)  # (D_in, H)
    return loss, grad_w1, grad_w2


def tensor_loop(
    num_samples: int = 64,
    in_features: int = 1000,
    hidden_features: int = 100,
    out_features: int = 10,
    lr: float = 1e-6,
    steps: int = 500,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    initial: Sequence[torch.Tensor] | None = None,
    on_step: StepCallback | None = None,
) -> LoopResult[torch.Tensor]:
    """The seed's section 二: torch tensors, hand-written backprop, ``w = w - lr * grad``.

    Args:
        num_samples: N, the rows of x and y.
        in_features: D_in.
        hidden_features: H.
        out_features: D_out.
        lr: the learning rate (the seed's 1e-6).
        steps: the number of updates (the seed's 500).
        seed: draws x, y, w1, w2 (see :func:`initial_tensors`) when ``initial`` is None.
        device: where to compute; the tensors are drawn on the CPU and moved there.
        dtype: the seed's ``torch.float`` (float32) or float64.
        initial: ``(x, y, w1, w2)`` to start from instead of drawing them; they are copied.
        on_step: called with ``(t, loss)`` where the seed prints them.

    Returns:
        Every step's loss and the final weights, on ``device``.
    """
    sizes = (num_samples, in_features, hidden_features, out_features)
    x, y, w1, w2 = _torch_start(initial, seed, sizes, device, dtype)

    learning_rate = lr
    losses: list[float] = []
    for t in range(steps):
        loss, grad_w1, grad_w2 = tensor_gradients(x, y, w1, w2)
        losses.append(loss.item())  # .item(): the one-element tensor as a Python float, as the seed prints it
        if on_step is not None:
            on_step(t, losses[-1])

        # Rebinding is harmless here: nothing tracks gradients, so a new tensor is as good as the old one.
        w1 = w1 - learning_rate * grad_w1
        w2 = w2 - learning_rate * grad_w2
    return LoopResult(losses, w1, w2)


def autograd_loop(
    num_samples: int = 64,
    in_features: int = 1000,
    hidden_features: int = 100,
    out_features: int = 10,
    lr: float = 1e-6,
    steps: int = 500,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    initial: Sequence[torch.Tensor] | None = None,
    on_step: StepCallback | None = None,
) -> LoopResult[torch.Tensor]:
    """The seed's section 三: ``loss.backward()``, then ``w -= lr * w.grad`` under no_grad and ``grad.zero_()``.

    The arguments are those of :func:`tensor_loop`.

    Returns:
        Every step's loss and the final weights (detached), on ``device``.
    """
    sizes = (num_samples, in_features, hidden_features, out_features)
    return _autograd_loop(lambda h: h.clamp(min=0), sizes, lr, steps, seed, device, dtype, initial, on_step)


class MyReLU(torch.autograd.Function):
    """The ReLU as a custom autograd Function, as the PyTorch tutorial writes it.

    Forward is ``input.clamp(min=0)``; backward passes the gradient where the input was
    non-negative and zeroes it where the input was negative, like the hand-written
    ``grad_h[h < 0] = 0``.

    Example:
        >>> x = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
        >>> MyReLU.apply(x).sum().backward()
        >>> x.grad
        tensor([0., 1., 1.])
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, input: torch.Tensor) -> torch.Tensor:
        # Autograd keeps no history inside forward, so save what backward needs: where input < 0.
        ctx.save_for_backward(input)
        return input.clamp(min=0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor) -> torch.Tensor:
        (input,) = ctx.saved_tensors
        # Clone: grad_output may be shared with other parts of the graph and must not be changed.
        grad_input = grad_output.clone()
        grad_input[input < 0] = 0
        return grad_input


def function_loop(
    num_samples: int = 64,
    in_features: int = 1000,
    hidden_features: int = 100,
    out_features: int = 10,
    lr: float = 1e-6,
    steps: int = 500,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    initial: Sequence[torch.Tensor] | None = None,
    on_step: StepCallback | None = None,
) -> LoopResult[torch.Tensor]:
    """Section 三 with the ReLU as :class:`MyReLU`: ``y_pred = relu(x.mm(w1)).mm(w2)``, ``relu = MyReLU.apply``.

    The arguments are those of :func:`tensor_loop`.

    Returns:
        Every step's loss and the final weights (detached), on ``device``.
    """
    sizes = (num_samples, in_features, hidden_features, out_features)
    return _autograd_loop(MyReLU.apply, sizes, lr, steps, seed, device, dtype, initial, on_step)


def _autograd_loop(
    relu: Callable[[torch.Tensor], torch.Tensor],
    sizes: tuple[int, int, int, int],
    lr: float,
    steps: int,
    seed: int,
    device: torch.device | str,
    dtype: torch.dtype,
    initial: Sequence[torch.Tensor] | None,
    on_step: StepCallback | None,
) -> LoopResult[torch.Tensor]:
    """Section 三's loop with the ReLU passed in: the only line in which the two autograd loops differ."""
    x, y, w1, w2 = _torch_start(initial, seed, sizes, device, dtype)
    # requires_grad: backward() computes gradients only for tensors that ask for them.
    w1.requires_grad_(True)
    w2.requires_grad_(True)

    learning_rate = lr
    losses: list[float] = []
    for t in range(steps):
        # Forward pass; autograd records what backward needs, so no intermediate is kept by hand.
        y_pred = relu(x.mm(w1)).mm(w2)  # (N, D_out)

        loss = (y_pred - y).pow(2).sum()  # ()
        losses.append(loss.item())
        if on_step is not None:
            on_step(t, losses[-1])

        loss.backward()

        # no_grad: the weights require grad, but the update itself must not be recorded in the graph.
        with torch.no_grad():
            # In place (-=): `w1 = w1 - ...` would rebind the name to a new tensor whose .grad is None
            # (the seed's section 四).
            w1 -= learning_rate * w1.grad
            w2 -= learning_rate * w2.grad

            # backward() adds to .grad, so zero it before the next step's backward.
            w1.grad.zero_()
            w2.grad.zero_()
    return LoopResult(losses, w1.detach(), w2.detach())


# The command line.

LOOPS = ("numpy", "tensor", "autograd", "function")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; use an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; use an integer >= 1")
    return value


def _learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; use a finite number > 0, e.g. 1e-6") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not allowed; use a finite number > 0, e.g. 1e-6")
    return value


class _OneLineParser(argparse.ArgumentParser):
    """Reports a bad argument in one line and exit status 2, as the package's own command line does."""

    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage block first; one line naming the flag says more, faster.
        self.exit(2, f"error: {message} (see --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="python -m twolayer_lightning.reference",
        description="Run one of the seed's training loops and print `t loss` as the seed does.",
    )
    parser.add_argument(
        "loop", choices=LOOPS, help="numpy: section 一; tensor: 二; autograd: 三; function: 三 with MyReLU"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the draws of x, y, w1, w2 (default: 0)")
    parser.add_argument("--steps", type=_positive_int, default=500, help="number of updates (default: 500)")
    parser.add_argument("--lr", type=_learning_rate, default=1e-6, help="learning rate (default: 1e-6)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N; torch loops only (default: cpu)")
    parser.add_argument(
        "--dtype", choices=tuple(TORCH_DTYPES), default=None, help="default: float64 for numpy, float32 for torch"
    )
    parser.add_argument("--every", type=_positive_int, default=1, help="print every this many steps (default: 1)")
    parser.add_argument("--num-samples", type=_positive_int, default=64, help="N (default: 64)")
    parser.add_argument("--in-features", type=_positive_int, default=1000, help="D_in (default: 1000)")
    parser.add_argument("--hidden-features", type=_positive_int, default=100, help="H (default: 100)")
    parser.add_argument("--out-features", type=_positive_int, default=10, help="D_out (default: 10)")
    return parser


def _check_device(parser: argparse.ArgumentParser, loop: str, text: str) -> torch.device:
    """The device ``text`` names, or exit with one line saying why it cannot be used."""
    try:
        device = torch.device(text)
    except RuntimeError:
        parser.error(f"argument --device: {text!r} is not a device; use cpu, cuda or cuda:N")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"argument --device: {text!r} is not supported; use cpu, cuda or cuda:N")
    if loop == "numpy" and device.type != "cpu":
        parser.error(f"argument --device: {text!r} cannot run the numpy loop, which runs on the CPU; use cpu")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            parser.error(
                f"argument --device: {text!r} needs CUDA, which torch {torch.__version__} does not see; use cpu"
            )
        if device.index is not None and device.index >= count:
            parser.error(f"argument --device: {text!r} does not exist; this machine has cuda:0 to cuda:{count - 1}")
    return device


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m twolayer_lightning.reference LOOP [options]``: print ``t loss`` every ``--every`` steps.

    The last line is ``final <loss>``, the loss of the last step (the last number the seed's
    loop prints), whether or not that step's line was printed.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` if None.

    Raises:
        SystemExit: with status 2 and one ``error:`` line naming the flag, for bad arguments.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    device = _check_device(parser, args.loop, args.device)

    def print_every(t: int, loss: float) -> None:
        if t % args.every == 0:
            print(t, loss, flush=True)

    common = {
        "num_samples": args.num_samples,
        "in_features": args.in_features,
        "hidden_features": args.hidden_features,
        "out_features": args.out_features,
        "lr": args.lr,
        "steps": args.steps,
        "seed": args.seed,
        "on_step": print_every,
    }
    if args.loop == "numpy":
        result = numpy_loop(**common, dtype=args.dtype or "float64")
    else:
        loop = {"tensor": tensor_loop, "autograd": autograd_loop, "function": function_loop}[args.loop]
        result = loop(**common, device=device, dtype=TORCH_DTYPES[args.dtype or "float32"])
    print("final", result.losses[-1])


if __name__ == "__main__":
    main(sys.argv[1:])
