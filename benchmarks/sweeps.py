"""Whole-process wall time of learning-rate sweeps: Hydra's basic launcher against ``hydra/launcher=stacked``.

Each variant is the command a user types (``python train.py -m ...`` with the config's defaults:
CSV logger, checkpoint and loss.png per job, summary at the end), run in a fresh process, the
variants interleaved, ``--repeats`` times; the table shows medians, spreads and the ratio to the
basic launcher. Every repeat also times ``python train.py --cfg job`` (start-up: Python, importing
torch, Lightning and Hydra, composing the config; what any sweep pays once, whatever its launcher),
and the column "beyond start-up" is the ratio of the time beyond that start-up. After the runs
every job's final loss is compared with the basic launcher's (same overrides): exact members
must be equal (``bitwise: yes``), batched ones are shown with their largest relative difference.

Cases:

- ``seed16``: the seed's problem (64x1000 -> 100 -> 10, 500 updates), 16 learning rates.
- ``table64``: a small real table (scikit-learn's diabetes data, 442 x 10 -> 20 -> 1, ``data=files``,
  full batch, 500 updates), 64 learning rates. Needs scikit-learn (the test extra).

    .venv/bin/python benchmarks/sweeps.py                  # both cases, 3 repeats (about 10 minutes on 2 cores)
    .venv/bin/python benchmarks/sweeps.py --cases seed16 --repeats 1
    .venv/bin/python benchmarks/sweeps.py --threads 1 --clock cpu      # steadier on a shared machine
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = {
    "basic": [],
    "stacked exact": ["hydra/launcher=stacked"],
    "stacked batched": ["hydra/launcher=stacked", "hydra.launcher.exact=false"],
}


def lrs(low: float, high: float, count: int) -> str:
    return ",".join(f"{lr:.3g}" for lr in np.geomspace(low, high, count))


def cases(folder: Path) -> dict[str, list[str]]:
    found = {"seed16": [f"optim.lr={lrs(1e-7, 4e-6, 16)}"]}
    try:
        from sklearn.datasets import load_diabetes
    except ImportError:
        print("table64: skipped, needs scikit-learn (pip install -e '.[test]')")
        return found
    x, y = load_diabetes(return_X_y=True)
    np.savez(folder / "diabetes.npz", x=x.astype(np.float32), y=y.astype(np.float32).reshape(-1, 1))
    found["table64"] = ["data=files", f"data.x_path={folder / 'diabetes.npz'}", f"optim.lr={lrs(1e-6, 1e-2, 64)}"]
    return found


def sweep(overrides: list[str], sweep_dir: Path | None, threads: int | None, clock: str = "wall") -> float:
    """Seconds of ``python train.py -m overrides`` into ``sweep_dir`` (without one, of ``--cfg job``): wall
    time, or with ``clock="cpu"`` the process's CPU time (user + system, all its threads)."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    command = ["-m", *overrides, f"hydra.sweep.dir={sweep_dir}"] if sweep_dir else ["--cfg", "job"]
    started, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, "train.py", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"{' '.join(overrides)[:200]}: exit {result.returncode}\n{result.stderr[-2000:]}")
    if clock == "cpu":
        return after.ru_utime - children.ru_utime + after.ru_stime - children.ru_stime
    return seconds


def final_losses(sweep_dir: Path) -> dict[tuple[str, ...], float | None]:
    """Each job's final train loss by its overrides (None: diverged)."""
    losses = {}
    for metrics_file in sweep_dir.glob("*/metrics.json"):
        overrides = (metrics_file.parent / ".hydra" / "overrides.yaml").read_text().split("\n")
        key = tuple(sorted(line.removeprefix("- ") for line in overrides if line.startswith("- ")))
        metrics = json.loads(metrics_file.read_text())
        losses[key] = metrics["train_loss"] if metrics["status"] == "ok" else None
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="seed16,table64")
    parser.add_argument("--launchers", default=",".join(LAUNCHERS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the runs (default: torch's)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: each process's CPU time, steadier on a shared machine (with --threads 1 it is about its wall time)",
    )
    args = parser.parse_args()
    launchers = args.launchers.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        available = cases(folder)
        startup: list[float] = []
        print(
            f"{'case':8} {'launcher':16} {'jobs':>4} {args.clock + ' s':>8} {'spread':>7} {'x basic':>8} "
            f"{'beyond start-up':>16}  same final losses"
        )
        for case in args.cases.split(","):
            if case not in available:
                continue
            overrides = available[case]
            jobs = len(overrides[-1].split(","))
            times: dict[str, list[float]] = {name: [] for name in launchers}
            for repeat in range(args.repeats):
                startup.append(sweep([], None, args.threads, args.clock))
                for name in launchers:
                    sweep_dir = folder / f"{case}-{name.replace(' ', '-')}-{repeat}"
                    times[name].append(sweep([*LAUNCHERS[name], *overrides], sweep_dir, args.threads, args.clock))
            reference = final_losses(folder / f"{case}-basic-0") if "basic" in launchers else None
            base = statistics.median(times["basic"]) if "basic" in launchers else None
            start = statistics.median(startup)
            for name in launchers:
                median = statistics.median(times[name])
                spread = (max(times[name]) - min(times[name])) / median
                same = ""
                if reference is not None and name != "basic":
                    got = final_losses(folder / f"{case}-{name.replace(' ', '-')}-0")
                    pairs = [(got.get(key), want) for key, want in reference.items()]
                    if all(g == w for g, w in pairs):
                        same = f"bitwise: yes ({len(pairs)} jobs)"
                    else:
                        both = [(g, w) for g, w in pairs if g is not None and w is not None]
                        worst = max((abs(g - w) / abs(w) for g, w in both if w), default=0.0)
                        status = sum((g is None) != (w is None) for g, w in pairs)
                        same = f"bitwise: no; max relative difference {worst:.2e}, {status} status differ"
                ratio = f"{median / base:.2f}" if base else ""
                beyond = f"{(median - start) / (base - start):.2f}" if base else ""
                print(
                    f"{case:8} {name:16} {jobs:>4} {median:8.2f} {spread:7.0%} {ratio:>8} {beyond:>16}  {same}",
                    flush=True,
                )
        if startup:
            median, spread = statistics.median(startup), (max(startup) - min(startup)) / statistics.median(startup)
            print(f"start-up (python train.py --cfg job): {median:.2f} s, spread {spread:.0%}")


if __name__ == "__main__":
    main()
