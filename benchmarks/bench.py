"""The seed's raw autograd loop beside the package, in one process, on one device, same threads.

Run from the repository root (see benchmarks/README.md for what each column means)::

    .venv/bin/python benchmarks/bench.py                  # the CPU table: a few minutes on 2 cores
    .venv/bin/python benchmarks/bench.py --quick          # a smoke check: seconds
    .venv/bin/python benchmarks/bench.py --device cuda    # the same on one GPU: a couple of minutes
    .venv/bin/python benchmarks/bench.py --with-run       # add the full `twolayer_lightning.run` path
    .venv/bin/python benchmarks/bench.py --startup --multirun --shapes none   # start-up costs only

Variants, each timed from the same initial tensors (x, y, w1, w2 drawn in the seed's order):

- ``raw``: the seed's section 三 loop written out below, without ``loss.item()``.
- ``raw+item``: the same with ``loss.item()`` every update, as the seed's ``print(t, loss.item())``.
- ``raw handwritten``: the seed's section 二 loop (gradients written out by hand, no autograd) with
  the same in-place update, written out below: the floor for the package's ``handwritten`` path.
- ``raw graph`` (CUDA only): the raw loop's body captured once as a CUDA graph and replayed: what
  the GPU can do without Python and kernel launches, for reference.
- ``pkg PATH ups=K``: LitTwoLayerNet + SyntheticRegressionData in a ``lightning.Trainer`` with
  ``update_path=PATH`` and ``updates_per_step=K``.
- ``run() csv defaults``: ``twolayer_lightning.run([...])`` with the CSV logger and the config's
  defaults (``--with-run``).

With ``--batch-size B`` every update takes the next shuffled mini-batch of B rows instead of the
full batch: the raw loop gathers it with ``x[idx]``, its indices drawn by the same
``EpochBatches`` sampler that the package's ``FileRegressionData`` uses, so the two train on the
same batches in the same order.

Every package variant must end with weights ``torch.equal`` to the raw loop's and with
``global_step == steps``; the script says ``bitwise: yes/no`` and exits with status 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import hashlib
import itertools
import json
import logging
import math
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import lightning as L
import torch

from twolayer_lightning import FileRegressionData, LitTwoLayerNet, SyntheticRegressionData, cli, run, training
from twolayer_lightning.data import EpochBatches
from twolayer_lightning.updates import UPDATE_PATHS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHAPES = "64x1000x100x10,4096x1000x1024x10,16384x1000x2048x10"
CUDA_SHAPES = DEFAULT_SHAPES + ",65536x1000x4096x10"  # about 1.1 TFLOP per update: seconds on a CPU core
QUICK_SHAPES = "64x1000x100x10"
SEED = 0
MAX_AUTO_STEPS = 2000

# What the timed regions read: wall time (time.perf_counter) by default, or this process's CPU time
# (time.process_time, --clock cpu), which other processes on a shared machine disturb far less.
# CPU time is the work done only with one thread: idle or spinning threads would count too.
clock = time.perf_counter


class Shape(NamedTuple):
    """The seed's ``N, D_in, H, D_out``: batch rows, input features, hidden units, outputs."""

    n: int
    d_in: int
    h: int
    d_out: int

    def __str__(self) -> str:
        return "x".join(map(str, self))


def parse_shapes(text: str) -> list[Shape]:
    if text.strip().lower() == "none":
        return []
    shapes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise SystemExit(f"--shapes: {item!r} is not NxD_inxHxD_out with positive integers, e.g. 64x1000x100x10")
        shapes.append(Shape(*map(int, parts)))
    return shapes


def flops_per_update(s: Shape) -> int:
    """Multiply-adds x2 of one update: forward 2*N*D_in*H + 2*N*H*D_out, backward 2*N*D_in*H + 4*N*H*D_out.

    Backward computes grad_w2 = h_relu^T @ g (2*N*H*D_out), grad_h = g @ w2^T (2*N*H*D_out) and
    grad_w1 = x^T @ grad_h (2*N*D_in*H). There is no grad for x (it does not require grad), so
    backward costs about what forward costs, not twice. Element-wise work is left out.
    """
    return 4 * s.n * s.d_in * s.h + 6 * s.n * s.h * s.d_out


def learning_rate(s: Shape) -> float:
    """The seed's 1e-6 up to its own N*H; less for larger shapes, whose summed loss diverges at 1e-6.

    4e-4 / (N*H) keeps 4096x1000x1024x10 and 16384x1000x2048x10 finite and still moves nearly every
    weight, so the bitwise check compares trained weights, not the initial ones.
    """
    return 1e-6 if s.n * s.h <= 64 * 100 else 4e-4 / (s.n * s.h)


def sync(device: torch.device) -> None:
    # CUDA runs asynchronously: without this the clock would stop before the work is done.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def initial_tensors(s: Shape, device: torch.device) -> tuple[torch.Tensor, ...]:
    """x, y, w1, w2 drawn in the seed's order from one generator, as the package draws them."""
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(s.n, s.d_in, generator=generator)  # (N, D_in)
    y = torch.randn(s.n, s.d_out, generator=generator)  # (N, D_out)
    w1 = torch.randn(s.d_in, s.h, generator=generator)  # (D_in, H)
    w2 = torch.randn(s.h, s.d_out, generator=generator)  # (H, D_out)
    return tuple(t.to(device) for t in (x, y, w1, w2))


@dataclass
class Result:
    """One timed run: the per-update seconds and what is checked against the raw loop."""

    seconds: float  # the timed region: the update loop only
    w1: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    global_step: int | None = None
    once: dict[str, float] = field(default_factory=dict)  # one-time costs in seconds, by name


def index_batches(n: int, batch_size: int) -> Iterator[torch.Tensor]:
    """Shuffled mini-batches of row indices, epoch after epoch, as FileRegressionData(seed=SEED) draws them.

    The raw loop gathers each batch itself with ``x[idx]``.
    """
    batches = EpochBatches(n, batch_size, shuffle=True, seed=SEED)
    for epoch in itertools.count():
        batches.set_epoch(epoch)
        yield from batches


def batch_stream(
    x_all: torch.Tensor, y_all: torch.Tensor, batch_size: int | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The full batch every update, or the next shuffled mini-batch gathered with ``x[idx]`` on the device."""
    if not batch_size:
        yield from itertools.repeat((x_all, y_all))
    for idx in index_batches(len(x_all), batch_size):
        idx = idx.to(x_all.device)
        yield x_all[idx], y_all[idx]  # (B, D_in), (B, D_out)


def raw_loop(
    tensors: tuple[torch.Tensor, ...], lr: float, steps: int, item: bool, batch_size: int | None = None
) -> Result:
    """The seed's section 三 loop, with ``loss.item()`` every update if ``item``.

    With ``batch_size``, each update takes the next shuffled mini-batch of that many rows instead of
    the full batch, gathered with ``x[idx]`` from the data on the device.
    """
    x_all, y_all, w1, w2 = tensors
    w1 = w1.clone().requires_grad_(True)
    w2 = w2.clone().requires_grad_(True)
    batches = batch_stream(x_all, y_all, batch_size)
    sync(x_all.device)
    started = clock()
    for _ in range(steps):
        x, y = next(batches)
        y_pred = x.mm(w1).clamp(min=0).mm(w2)  # (N, D_out)
        loss = (y_pred - y).pow(2).sum()
        if item:
            loss.item()  # the seed prints it every update: one device-to-host sync per update
        loss.backward()
        # No autograd for the update: the weights require grad, the update itself needs none.
        with torch.no_grad():
            w1 -= lr * w1.grad
            w2 -= lr * w2.grad
            w1.grad.zero_()
            w2.grad.zero_()
    sync(x_all.device)
    return Result(clock() - started, w1.detach(), w2.detach(), steps)


def raw_handwritten_loop(
    tensors: tuple[torch.Tensor, ...], lr: float, steps: int, batch_size: int | None = None
) -> Result:
    """The seed's section 二 loop: backprop by hand, then the same in-place update as section 三."""
    x_all, y_all, w1, w2 = tensors
    w1, w2 = w1.clone(), w2.clone()
    batches = batch_stream(x_all, y_all, batch_size)
    sync(x_all.device)
    started = clock()
    for _ in range(steps):
        x, y = next(batches)
        h = x.mm(w1)
        h_relu = h.clamp(min=0)
        y_pred = h_relu.mm(w2)
        diff = y_pred - y
        diff.pow(2).sum()  # the loss, computed as the seed does; nothing reads it here
        grad_y_pred = 2.0 * diff
        grad_w2 = h_relu.t().mm(grad_y_pred)
        grad_h = grad_y_pred.mm(w2.t())
        grad_h[h < 0] = 0
        grad_w1 = x.t().mm(grad_h)
        w1 -= lr * grad_w1
        w2 -= lr * grad_w2
    sync(x_all.device)
    return Result(clock() - started, w1, w2, steps)


class LoopTimer(L.Callback):
    """Times the training loop alone: from ``on_train_start`` to ``on_train_end``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.started = math.nan
        self.seconds = math.nan

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sync(self.device)
        self.started = clock()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sync(self.device)
        self.seconds = clock() - self.started


def raw_graph_loop(tensors: tuple[torch.Tensor, ...], lr: float, steps: int) -> Result:
    """The raw loop's body captured once as a CUDA graph (after eager warm-up on a copy), then replayed."""
    x, y, w1, w2 = tensors
    w1 = w1.clone().requires_grad_(True)
    w2 = w2.clone().requires_grad_(True)
    initial = (w1.detach().clone(), w2.detach().clone())

    def body() -> torch.Tensor:
        loss = (x.mm(w1).clamp(min=0).mm(w2) - y).pow(2).sum()
        loss.backward()
        with torch.no_grad():
            w1.sub_(lr * w1.grad)  # what `w1 -= lr * w1.grad` calls; `-=` would make w1 local here
            w2.sub_(lr * w2.grad)
            w1.grad.zero_()
            w2.grad.zero_()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(side)
    with torch.no_grad():
        w1.copy_(initial[0])
        w2.copy_(initial[1])
    w1.grad = w2.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    sync(x.device)
    started = clock()
    for _ in range(steps):
        graph.replay()
    sync(x.device)
    return Result(clock() - started, w1.detach(), w2.detach(), steps)


def package_fit(
    s: Shape,
    device: torch.device,
    steps: int,
    updates_per_step: int,
    log_every: int,
    path: str = "auto",
    batch_size: int | None = None,
) -> Result:
    """LitTwoLayerNet in a Trainer; the per-update time excludes Trainer construction and fit set-up.

    With ``batch_size``: FileRegressionData's shuffled mini-batches of the same x and y (seed SEED).
    """
    generator = torch.Generator().manual_seed(SEED)
    data: SyntheticRegressionData | FileRegressionData = SyntheticRegressionData(
        s.n, s.d_in, s.d_out, generator=generator
    )
    if batch_size:
        data = FileRegressionData(data.x, data.y, batch_size=batch_size, seed=SEED)
    model = LitTwoLayerNet(
        s.d_in,
        s.h,
        s.d_out,
        lr=learning_rate(Shape(batch_size, *s[1:]) if batch_size else s),
        generator=generator,
        updates_per_step=updates_per_step,
        update_path=path,
    )
    timer = LoopTimer(device)
    started = clock()
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=log_every,
        callbacks=[timer],
    )
    constructed = clock()
    trainer.fit(model, datamodule=data)
    sync(device)
    fit_seconds = clock() - constructed
    return Result(
        timer.seconds,
        model.net.w1.detach(),
        model.net.w2.detach(),
        trainer.global_step,
        {"Trainer()": constructed - started, "fit set-up+tear-down": fit_seconds - timer.seconds},
    )


def run_path(
    s: Shape, device: torch.device, steps: int, updates_per_step: int | None, log_every: int, path: str = "auto"
) -> Result:
    """``twolayer_lightning.run`` with the CSV logger; per-update time is its ``fit_seconds`` (with fit set-up)."""
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        overrides = [
            f"seed={SEED}",
            f"data.num_samples={s.n}",
            f"model.in_features={s.d_in}",
            f"model.hidden_features={s.h}",
            f"model.out_features={s.d_out}",
            f"optim.lr={learning_rate(s)!r}",
            f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
            f"trainer.max_steps={steps}",
            f"trainer.updates_per_step={'null' if updates_per_step is None else updates_per_step}",
            f"trainer.update_path={path}",
            f"trainer.log_every_n_steps={log_every}",
            "logger=csv",
        ]
        timer = LoopTimer(device)
        make_trainer = training.make_trainer

        def make_timed_trainer(*args: object, **kwargs: object) -> L.Trainer:
            trainer = make_trainer(*args, **kwargs)
            trainer.callbacks.append(timer)  # the update loop's time, as in package_fit
            return trainer

        sync(device)
        with mock.patch.object(training, "make_trainer", make_timed_trainer):
            started = clock()
            metrics = run(overrides, output_dir=tmp)
            total = clock() - started
        state = torch.load(Path(tmp) / "last.ckpt", map_location=device, weights_only=True)["state_dict"]
    # run() reuses the config composed for the same overrides; what a call with new ones pays on top:
    started = clock()
    cli.compose(overrides)
    compose = clock() - started
    return Result(
        metrics["fit_seconds"],
        state["net.w1"],
        state["net.w2"],
        metrics["global_step"],
        {"run() total": total, "beyond updates": total - timer.seconds, "Hydra compose (new overrides)": compose},
    )


def mm_rate(s: Shape, device: torch.device) -> float:
    """GFLOP/s of one plain ``torch.mm`` of the dominant shape, (N, D_in) @ (D_in, H)."""
    a = torch.randn(s.n, s.d_in, device=device)
    b = torch.randn(s.d_in, s.h, device=device)
    a.mm(b)
    sync(device)
    started = clock()
    a.mm(b)
    sync(device)
    calls = max(1, min(1000, round(0.1 / max(clock() - started, 1e-7))))
    sync(device)
    started = clock()
    for _ in range(calls):
        a.mm(b)
    sync(device)
    return 2 * s.n * s.d_in * s.h * calls / (clock() - started) / 1e9


def auto_steps(raw: Callable[[int], Result], target_seconds: float) -> int:
    """Enough updates for one raw run (``raw(steps)``) to take about ``target_seconds`` (2 to MAX_AUTO_STEPS)."""
    raw(1)  # warm-up: first-call allocations and kernel selection
    per_update = raw(1).seconds
    if per_update < 0.05:
        probe = max(2, round(0.2 / per_update))
        per_update = raw(probe).seconds / probe
    steps = target_seconds / per_update
    if steps >= 10:
        steps = round(steps, 1 - math.floor(math.log10(steps)))  # two significant digits
    return int(min(MAX_AUTO_STEPS, max(2, round(steps))))


@dataclass
class Variant:
    name: str
    fn: Callable[[], Result]
    times: list[float] = field(default_factory=list)  # per-update seconds, one per repeat
    once: dict[str, list[float]] = field(default_factory=dict)
    checks: list[tuple[bool, bool]] = field(default_factory=list)  # (bitwise equal, global_step == steps)


def bench_shape(s: Shape, args: argparse.Namespace, device: torch.device) -> list[dict[str, object]]:
    batch = args.batch_size
    tensors = initial_tensors(s, device)
    per_update = Shape(batch, *s[1:]) if batch else s  # the rows one update computes on
    lr = learning_rate(per_update)
    steps = args.steps or auto_steps(lambda n: raw_loop(tensors, lr, n, False, batch), args.target_seconds)
    label = f"{s} b{batch}" if batch else str(s)
    variants = [
        Variant("raw", lambda: raw_loop(tensors, lr, steps, False, batch)),
        Variant("raw+item", lambda: raw_loop(tensors, lr, steps, True, batch)),
        Variant("raw handwritten", lambda: raw_handwritten_loop(tensors, lr, steps, batch)),
    ]
    if device.type == "cuda" and not batch:
        variants.append(Variant("raw graph", lambda: raw_graph_loop(tensors, lr, steps)))
    for path in args.paths:
        if batch and path == "cuda_graph":
            print(f"  {label}: pkg cuda_graph skipped: it replays one fixed batch, not mini-batches")
            continue
        effective = set()
        # Mini-batches take one update per fetched batch (several would repeat each batch).
        for ups in [1] if batch else args.updates_per_step:
            # With steps <= ups the whole fit is one training step: a larger ups would time the same thing.
            if min(ups, steps) in effective:
                print(f"  {s}: pkg {path} ups={ups} skipped: with steps={steps} it runs as ups={min(ups, steps)}")
                continue
            effective.add(min(ups, steps))
            variants.append(
                Variant(
                    f"pkg {path} ups={ups}",
                    lambda ups=ups, path=path: package_fit(s, device, steps, ups, args.log_every, path, batch),
                )
            )
    if args.with_run and not batch:
        # The config's defaults (update_path=auto, updates_per_step=null: as many as log_every allows).
        # Its per-update time is the fit_seconds that train() measures: wall time, whatever --clock says.
        name = "run() csv defaults" + (" wall" if args.clock == "cpu" else "")
        variants.append(Variant(name, lambda: run_path(s, device, steps, None, args.log_every)))

    # Warm-up: a short run of each kind, so that no timed run pays first-call costs.
    raw_loop(tensors, lr, min(steps, 2), True, batch)
    raw_handwritten_loop(tensors, lr, min(steps, 2), batch)
    if device.type == "cuda" and not batch:
        raw_graph_loop(tensors, lr, min(steps, 2))
    for path in args.paths:
        if not (batch and path == "cuda_graph"):
            package_fit(s, device, min(steps, 2), 1, args.log_every, path, batch)
    if args.with_run and not batch:
        run_path(s, device, min(steps, 2), None, args.log_every)

    reference: Result | None = None
    mm = []
    for rep in range(args.repeats):
        # Interleaved and rotated (ABC, BCA, CAB, ...): slow phases of a shared machine hit every variant.
        shift = rep % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            gc.collect()
            result = variant.fn()
            variant.times.append(result.seconds / steps)
            for name, seconds in result.once.items():
                variant.once.setdefault(name, []).append(seconds)
            if reference is None:  # the raw loop runs first in the first repeat: the oracle
                reference = result
            bitwise = torch.equal(result.w1, reference.w1) and torch.equal(result.w2, reference.w2)
            variant.checks.append((bitwise, result.global_step == steps))
        mm.append(mm_rate(per_update, device))

    rows = []
    raw_times = variants[0].times
    for variant in variants:
        median = statistics.median(variant.times)
        rows.append(
            {
                "shape": label,
                "variant": variant.name,
                "steps": steps,
                "lr": lr,
                "us_per_update": median * 1e6,
                "spread": (max(variant.times) - min(variant.times)) / median,
                # Ratio of each repeat to the raw run of the same repeat, then the median: the
                # interleaving makes neighbours comparable even when the machine's speed drifts.
                "x_raw": statistics.median(t / r for t, r in zip(variant.times, raw_times, strict=True)),
                "gflops": flops_per_update(per_update) / median / 1e9,
                "mm_gflops": statistics.median(mm),
                "bitwise": all(b for b, _ in variant.checks),
                "global_step_ok": all(g for _, g in variant.checks),
                "once_ms": {name: statistics.median(v) * 1e3 for name, v in variant.once.items()},
            }
        )
    return rows


def ragged_check(s: Shape, args: argparse.Namespace, device: torch.device) -> bool:
    """Package runs whose steps are not a multiple of updates_per_step end where the raw loop ends."""
    steps = 2 * max(args.updates_per_step) + 7
    tensors = initial_tensors(s, device)
    lr = learning_rate(s)
    reference = raw_loop(tensors, lr, steps, item=False)
    ok = True
    for path in args.paths:
        for ups in args.updates_per_step:
            result = package_fit(s, device, steps, ups, args.log_every, path)
            bitwise = torch.equal(result.w1, reference.w1) and torch.equal(result.w2, reference.w2)
            step_ok = result.global_step == steps
            ok &= bitwise and step_ok
            print(
                f"  {s} steps={steps} {path} ups={ups} ({steps % ups} left over): global_step "
                f"{result.global_step} ({'ok' if step_ok else 'WRONG'})  bitwise: {'yes' if bitwise else 'no'}"
            )
    return ok


def print_table(rows: list[dict[str, object]]) -> None:
    w = max(20, *(len(r["shape"]) for r in rows))  # mini-batch shapes carry a " bB" suffix
    header = (
        f"{'shape':<{w}} {'variant':<21} {'lr':>7} {'steps':>5} {'us/update':>11} {'spread':>7} {'x raw':>6} "
        f"{'GFLOP/s':>8} {'mm GFLOP/s':>10} {'bitwise':>7} {'steps ok':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        is_raw = r["variant"] == "raw"
        print(
            f"{r['shape']:<{w}} {r['variant']:<21} {r['lr']:>7.1e} {r['steps']:>5} {r['us_per_update']:>11.1f} "
            f"{r['spread']:>6.0%} {r['x_raw']:>6.2f} {r['gflops']:>8.1f} {r['mm_gflops']:>10.1f} "
            f"{'(ref)' if is_raw else ('yes' if r['bitwise'] else 'no'):>7} "
            f"{'yes' if r['global_step_ok'] else 'NO':>8}"
        )
    once = [r for r in rows if r["once_ms"]]
    if once:
        print("\none-time costs per run (median ms, not in us/update):")
        for r in once:
            costs = "  ".join(f"{name} {ms:.1f}" for name, ms in r["once_ms"].items())
            print(f"  {r['shape']:<{w}} {r['variant']:<21} {costs}")


def timed(cmd: list[str], threads: int | None) -> tuple[float, float, str]:
    """Wall and CPU seconds (user + system, of the child and its children) and the stdout of one command."""
    # OMP_NUM_THREADS is how a fresh process gets --threads (torch reads it at start-up).
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    before = os.times()
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - started
    after = os.times()
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu, done.stdout


SEED_SCRIPT = "python src/twolayer_lightning/reference.py autograd"  # by path: imports torch and numpy only
FULL_RUN = "python train.py (the defaults: 500 steps, csv, loss.png)"
# python train.py, with clocks read in the process itself: after `import lightning` and at the end.
TIMED_TRAIN_PY = """
import json, runpy, sys, time
clocks = (time.perf_counter, time.process_time)
started = [clock() for clock in clocks]
import lightning  # torch and Lightning, what `python -c 'import lightning'` imports
imported = [clock() for clock in clocks]
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
print(json.dumps({"import": [i - s for i, s in zip(imported, started)],
                  "total": [clock() - s for clock, s in zip(clocks, started)]}))
"""


def startup(repeats: int, threads: int | None) -> None:
    """Fresh processes, interleaved: the interpreter, the imports, the seed's script and ``train.py``.

    The seed's script is ``reference.autograd_loop`` run as a file (section 三, 500 steps, a
    ``t loss`` line per step, as the seed prints), which imports torch and numpy and nothing of
    the package. The package's own share of ``python train.py`` is measured inside that process,
    so that a neighbour's load cannot shift it between two processes: its time less the import
    of ``lightning`` (with torch) and less the run's ``fit_seconds`` (the updates, with the fit's
    set-up). What is left is the package's and Hydra's imports, Hydra, the config, the Trainer,
    the checkpoint, metrics.json and loss.png.
    """
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        commands: dict[str, Callable[[int], list[str]]] = {
            "python -c pass": lambda i: [py, "-c", "pass"],
            "python -c 'import torch'": lambda i: [py, "-c", "import torch"],
            "python -c 'import lightning'": lambda i: [py, "-c", "import lightning"],
            "python -c 'import twolayer_lightning'": lambda i: [py, "-c", "import twolayer_lightning"],
            SEED_SCRIPT: lambda i: [py, "src/twolayer_lightning/reference.py", "autograd"],
            "python train.py trainer.max_steps=1 logger=none": lambda i: [
                py,
                "train.py",
                "trainer.max_steps=1",
                "logger=none",
                f"output_dir={tmp}/run{i}",
                f"hydra.run.dir={tmp}/hydra{i}",  # keep Hydra's own files out of the repository
            ],
            FULL_RUN: lambda i: [py, "-c", TIMED_TRAIN_PY, f"hydra.run.dir={tmp}/full{i}"],
        }
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        shares: list[tuple[float, float, float]] = []  # (fit_seconds, own share wall, own share CPU)
        for i in range(repeats + 1):
            for name, cmd in commands.items():
                wall, cpu, stdout = timed(cmd(i), threads)
                if i == 0:
                    continue  # the first round warms the file cache and the .pyc files
                times[name].append((wall, cpu))
                if name == FULL_RUN:
                    inside = json.loads(stdout.strip().splitlines()[-1])
                    fit = json.loads(Path(tmp, f"full{i}", "metrics.json").read_text())["fit_seconds"]
                    pairs = zip(inside["total"], inside["import"], strict=True)  # (wall, CPU)
                    own = [total - imported - fit for total, imported in pairs]
                    shares.append((fit, *own))
    where = f"OMP_NUM_THREADS={threads}" if threads else "torch's default threads"
    print(f"\nstart-up ({where}): median of {repeats}, interleaved, after a warm-up round")
    print(f"  {'command':<60} {'wall s':>7} {'(min-max)':>11} {'CPU s':>7}")
    for name, values in times.items():
        wall = [w for w, _ in values]
        cpu = statistics.median(c for _, c in values)
        print(f"  {name:<60} {statistics.median(wall):7.2f} {f'({min(wall):.2f}-{max(wall):.2f})':>11} {cpu:7.2f}")
    fit, wall, cpu = ([share[k] for share in shares] for k in range(3))
    print(
        f"  its fit_seconds {statistics.median(fit):.2f} s; the package's own share (in the process: all less "
        f"import lightning, less fit_seconds) {statistics.median(wall):.2f} s wall ({min(wall):.2f}-{max(wall):.2f}), "
        f"{statistics.median(cpu):.2f} s CPU ({min(cpu):.2f}-{max(cpu):.2f}; CPU time less wall-clock fit_seconds)"
    )


def multirun(repeats: int, jobs: int, threads: int | None) -> None:
    """Per-job overhead of Hydra's in-process multirun: (wall - sum of fit_seconds) / jobs."""
    py = sys.executable
    seeds = {n: ",".join(map(str, range(n))) for n in (1, jobs)}
    results: dict[int, list[tuple[float, float, float]]] = {1: [], jobs: []}  # (wall, CPU, sum of fit_seconds)
    for _ in range(repeats):
        for n in (jobs, 1):
            with tempfile.TemporaryDirectory(prefix="bench-multirun-") as sweep:
                cmd = [py, "train.py", "-m", "trainer.max_steps=500", "logger=none"]
                wall, cpu, _ = timed([*cmd, f"seed={seeds[n]}", f"hydra.sweep.dir={sweep}"], threads)
                found = sorted(Path(sweep).glob("*/metrics.json"))
                if len(found) != n:
                    raise SystemExit(f"multirun: expected {n} metrics.json in {sweep}, found {len(found)}")
                fit = sum(json.loads(p.read_text())["fit_seconds"] for p in found)
                results[n].append((wall, cpu, fit))
    where = f"OMP_NUM_THREADS={threads}" if threads else "torch's default threads"
    print(
        f"\nmultirun: python train.py -m trainer.max_steps=500 logger=none seed=0..{jobs - 1} and seed=0 ({where}), "
        f"median of {repeats}"
    )
    for n in (1, jobs):
        wall = statistics.median(w for w, _, _ in results[n])
        cpu = statistics.median(c for _, c, _ in results[n])
        fit = statistics.median(f for _, _, f in results[n])
        overhead = statistics.median((w - f) / n for w, _, f in results[n])
        print(
            f"  {n} job(s): wall {wall:.2f} s (CPU {cpu:.2f} s), sum of fit_seconds {fit:.2f} s, "
            f"(wall - sum of fit_seconds) / jobs {overhead:.2f} s"
        )
    marginal = statistics.median(
        ((wn - fn) - (w1 - f1)) / (jobs - 1) for (wn, _, fn), (w1, _, f1) in zip(results[jobs], results[1], strict=True)
    )
    print(f"  one more job in the same process, beyond its fit: {marginal:.3f} s  (({jobs} jobs - 1 job) / {jobs - 1})")


def profile_fit(s: Shape, args: argparse.Namespace, device: torch.device) -> None:
    """cProfile of one package fit (the first path and updates_per_step), top functions by own time.

    cProfile slows Python code several times over and native code not at all, so read it for
    where the Python-side time goes, not for the per-update time.
    """
    steps = args.steps or 1000
    ups, path = args.updates_per_step[0], args.paths[0]
    package_fit(s, device, min(steps, 20), ups, args.log_every, path)  # warm-up
    profiler = cProfile.Profile()
    profiler.enable()
    package_fit(s, device, steps, ups, args.log_every, path)
    profiler.disable()
    print(f"\nprofile: pkg {path} ups={ups}, {s}, {steps} steps (cProfile; own time, then cumulative)")
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(20)
    stats.sort_stats("cumtime").print_stats(30)


def source_fingerprint() -> str:
    """The commit and a hash of the package's sources as run, so a table names what it measured."""
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    commit = git.stdout.strip() or "unknown"
    sources = sorted((REPO / "src" / "twolayer_lightning").rglob("*.py"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]
    return f"commit {commit}, src sha256 {digest}"


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's per-Trainer info lines ("GPU available: ..."); warnings still show.

    Also the package's end-of-fit advice ("training hardly moved ..."), which the large shapes'
    runs of a few updates at a small lr get every time.
    """
    loggers = {"lightning.pytorch": logging.WARNING, "twolayer_lightning.module": logging.ERROR}
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name, level in loggers.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--shapes", default=None, help=f"NxD_inxHxD_out,... or none (default {DEFAULT_SHAPES}; cuda: {CUDA_SHAPES})"
    )
    parser.add_argument("--steps", type=int, default=None, help="updates per timed run (default: ~--target-seconds)")
    parser.add_argument("--target-seconds", type=float, default=1.0, help="raw-loop time per run when --steps is unset")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats per variant; the median counts")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="cpu: process CPU time, needs --threads 1 (CPU only)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--updates-per-step", default="1,10,50", help="package variants, comma-separated")
    parser.add_argument(
        "--paths",
        default=None,
        help="update paths of the package variants, comma-separated (default: handwritten,direct,lightning; "
        "on cuda also cuda_graph)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="mini-batches of this many rows, shuffled (N is then the data's rows); one update per batch",
    )
    parser.add_argument("--log-every", type=int, default=50, help="Trainer log_every_n_steps (the config's 50)")
    parser.add_argument("--with-run", action="store_true", help="also time twolayer_lightning.run with the CSV logger")
    parser.add_argument("--startup", action="store_true", help="also time process start-up (subprocesses)")
    parser.add_argument("--multirun", action="store_true", help="also time a 4-job Hydra multirun (subprocesses)")
    parser.add_argument("--profile", action="store_true", help="also cProfile one package fit at the first shape")
    parser.add_argument("--quick", action="store_true", help="a tiny run for a smoke check")
    args = parser.parse_args()
    args.updates_per_step = [int(v) for v in args.updates_per_step.split(",")]
    default_paths = "handwritten,direct,lightning" + (",cuda_graph" if args.device == "cuda" else "")
    args.paths = (args.paths or default_paths).split(",")
    for path in args.paths:
        if path not in UPDATE_PATHS or (path == "cuda_graph" and args.device != "cuda"):
            allowed = UPDATE_PATHS if args.device == "cuda" else [p for p in UPDATE_PATHS if p != "cuda_graph"]
            raise SystemExit(f"--paths: {path!r} is not allowed with --device {args.device}; use {', '.join(allowed)}")
    if args.quick:
        args.shapes = args.shapes or QUICK_SHAPES
        args.steps = args.steps or 60
        args.repeats = 2
    shapes = parse_shapes(args.shapes or (CUDA_SHAPES if args.device == "cuda" else DEFAULT_SHAPES))

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"--device cuda: skipped, this torch ({torch.__version__}) sees no CUDA device; nothing was measured")
        return 0
    device = torch.device(args.device)
    if args.clock == "cpu":
        if args.device != "cpu" or args.threads != 1:
            raise SystemExit(
                "--clock cpu: needs --device cpu --threads 1 (other threads' spinning would count as work)"
            )
        global clock
        clock = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    # TF32 would make CUDA matmuls inexact and the bitwise check meaningless: the package trains
    # at "highest" too (cli.train), so both sides run the same kernels.
    torch.set_float32_matmul_precision("highest")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()}-thread CPU"
    print(
        f"device: {name}; torch {torch.__version__}, lightning {L.__version__}, python {sys.version.split()[0]}; "
        f"torch threads {threads}; clock {args.clock}; repeats {args.repeats}; log_every_n_steps {args.log_every}"
    )
    print(f"package: {source_fingerprint()}")
    print("GFLOP/s counts 4*N*D_in*H + 6*N*H*D_out per update (forward 2NDH+2NHO, backward 2NDH+4NHO)\n")

    ok = True
    if shapes:
        rows = []
        with quiet_lightning():
            for s in shapes:
                rows += bench_shape(s, args, device)
                print(f"  {s}: done")
            print("\nragged check: steps not divisible by updates_per_step")
            ok = ragged_check(shapes[0], args, device) if not args.batch_size else True
        if torch.get_num_threads() != threads:
            print(f"warning: torch threads changed during the run: {threads} -> {torch.get_num_threads()}")
        print()
        print_table(rows)
        ok &= all(r["bitwise"] and r["global_step_ok"] for r in rows)
        print(f"\nbitwise: {'yes' if ok else 'no'} (every package run vs the raw loop, and global_step == steps)")
    if args.profile and shapes:
        with quiet_lightning():
            profile_fit(shapes[0], args, device)
    if args.startup:
        startup(1 if args.quick else 3, args.threads)
    if args.multirun:
        multirun(1 if args.quick else 3, jobs=4, threads=args.threads)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
