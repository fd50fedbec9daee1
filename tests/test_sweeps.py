"""Sweeps as a user runs them: the Optuna preset, parallel jobs with joblib, submitit's local executor,
the exit status of a sweep in which nothing ended ok, two sweeps into one sweep dir.

Each runs tiny jobs through `python train.py -m` as a user would, and reads the sweep's own
summary (summary.csv, written by the SweepSummary callback in conf/config.yaml).
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def sweep(train_py, tmp_path: Path, *overrides: str) -> list[dict[str, str]]:
    result = train_py("-m", *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 0, result.stderr[-3000:]
    with (tmp_path / "sweep" / "summary.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_optuna_search_survives_diverged_and_failed_trials(tmp_path, train_py):
    """The lr_hidden preset runs all n_trials through a diverging and a refused trial, and summarises them."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4))
    np.savez(tmp_path / "data.npz", x=x, y=x @ rng.standard_normal((4, 2)))
    rows = sweep(
        train_py,
        tmp_path,
        "hparams_search=lr_hidden",
        "hydra.sweeper.n_trials=4",
        # On these 30 training rows an lr of 0.1 or more diverges within 10 steps (the loss is a sum), and a
        # hidden size of 0 is refused; with seed=0 the seeded sampler draws ok, diverging and refused trials.
        "optim.lr=tag(log, interval(1e-5, 1))",
        "model.hidden_features=choice(0, 25, 50)",
        "data=files",
        f"data.x_path={tmp_path / 'data.npz'}",
        "data.val_fraction=0.25",
        "trainer.max_steps=10",
        "trainer.val_every_n_steps=5",
        "logger=none",
    )
    assert len(rows) == 4  # the search went on to n_trials
    statuses = [row["status"] for row in rows]
    assert {"ok", "diverged", "failed"} <= set(statuses), statuses
    # Best first: the ok trials by the objective, then the diverged, then the failed ones.
    assert statuses == sorted(statuses, key=["ok", "diverged", "failed"].index)
    ok = [float(row["val_loss"]) for row in rows if row["status"] == "ok"]
    assert ok == sorted(ok)
    for row in rows:
        lr = float(row["overrides"].split("optim.lr=")[1].split()[0])
        if row["status"] == "diverged":
            assert "training diverged: the loss became" in row["error"] and f"optim.lr={lr:g}" in row["error"]
        if row["status"] == "failed":
            assert "model.hidden_features=0 is not allowed" in row["error"]
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(ok[0])  # Optuna minimised what train() returned
    assert best["best_params"]["model.hidden_features"] != 0
    assert set(best["best_params"]) == {"optim.lr", "model.hidden_features"}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_launchers_run_each_job_in_its_own_dir(tmp_path, launcher, train_py):
    pytest.importorskip(f"hydra_plugins.hydra_{launcher.split('_')[0]}_launcher")
    rows = sweep(train_py, tmp_path, f"hydra/launcher={launcher}", "seed=0,1", "trainer.max_steps=5", "logger=none")
    assert [row["status"] for row in rows] == ["ok", "ok"]
    seeds = sorted(json.loads((tmp_path / "sweep" / row["dir"] / "metrics.json").read_text())["seed"] for row in rows)
    assert seeds == [0, 1]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "stacked"])
def test_a_sweep_resumes_in_place_keeping_finished_jobs(tmp_path, train_py, launcher):
    """The sweep's own command plus ckpt_path=last: a finished job is kept (not trained again), a killed one
    resumes from its newest checkpoint, one that never started trains afresh; the weights are those of the
    uninterrupted sweep, bit for bit."""
    jobs = [f"hydra/launcher={launcher}", "seed=0,1,2", "trainer.max_steps=200", "trainer.checkpoint_every_n_steps=50"]
    sweep_dir = tmp_path / "sweep"
    first = train_py("-m", *jobs, f"hydra.sweep.dir={sweep_dir}")
    assert first.returncode == 0, first.stderr[-3000:]
    whole = {job: torch.load(sweep_dir / job / "last.ckpt", weights_only=True)["state_dict"] for job in ("1", "2")}
    # Job 1 as a kill -9 after step 100 leaves it, job 2 as if the sweep had died before it started.
    (sweep_dir / "1" / "metrics.json").unlink()
    (sweep_dir / "1" / "last.ckpt").unlink()
    for step in (150, 200):
        (sweep_dir / "1" / "checkpoints" / f"step-{step}.ckpt").unlink()
    shutil.rmtree(sweep_dir / "2")
    kept_mtime = (sweep_dir / "0" / "metrics.json").stat().st_mtime_ns

    again = train_py("-m", *jobs, f"hydra.sweep.dir={sweep_dir}", "ckpt_path=last")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (sweep_dir / "0" / "metrics.json").stat().st_mtime_ns == kept_mtime  # kept, not trained again
    assert "job kept: it had finished (status ok)" in (sweep_dir / "0" / "train.log").read_text()
    resumed = json.loads((sweep_dir / "1" / "metrics.json").read_text())
    assert resumed["status"] == "ok" and resumed["resumed_from"]["global_step"] == 100
    assert "resumed_from" not in json.loads((sweep_dir / "2" / "metrics.json").read_text())
    for job, state in whole.items():
        again_state = torch.load(sweep_dir / job / "last.ckpt", weights_only=True)["state_dict"]
        assert all(torch.equal(again_state[name], tensor) for name, tensor in state.items()), job
    with (sweep_dir / "summary.csv").open(newline="") as f:
        assert [row["status"] for row in csv.DictReader(f)] == ["ok", "ok", "ok"]


def summary_rows(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / "summary.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("launcher", "lrs", "statuses"),
    [
        ("basic", "-1,0", ["failed", "failed"]),  # every job refused
        ("basic", "1e-3,-1", ["diverged", "failed"]),  # on these rows lr 1e-3 turns the loss nan at step 2
        ("stacked", "1e-3,2e-3,-1", ["diverged", "diverged", "failed"]),  # a stacked group of two, one refused
    ],
)
def test_a_sweep_in_which_no_job_ended_ok_exits_1_with_its_summary(tmp_path, train_py, launcher, lrs, statuses):
    """A script or a scheduler must tell such a sweep from a success; the summary still says what happened."""
    sweep = tmp_path / "sweep"
    result = train_py(
        "-m", f"hydra/launcher={launcher}", f"optim.lr={lrs}", "trainer.max_steps=20", f"hydra.sweep.dir={sweep}"
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert sorted(row["status"] for row in summary_rows(sweep)) == statuses
    assert f"{len(statuses)} jobs" in (sweep / "summary.md").read_text()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and "no job of the sweep ended ok" in errors[0], result.stderr[-3000:]
    assert str(sweep / "summary.md") in errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("launcher", "ready"), [("basic", " loss "), ("stacked", "stacked fit of 2 jobs")])
def test_a_second_sweep_into_a_sweep_dir_in_use_is_refused_and_writes_nothing_there(
    tmp_path, train_py, launcher, ready
):
    """The loser of two sweeps into one sweep dir ends with one line and exit 2 before Hydra writes
    multirun.yaml or any job starts; the winner's files are its own."""
    sweep = tmp_path / "sweep"
    args = ["-m", f"hydra/launcher={launcher}", "optim.lr=1e-7,2e-7", f"hydra.sweep.dir={sweep}"]
    winner = subprocess.Popen(
        [sys.executable, "train.py", *args, "trainer.max_steps=1000000", "trainer.log_every_n_steps=100"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for line in winner.stdout:  # until the winner trains
            if ready in line:
                break
        multirun_yaml = (sweep / "multirun.yaml").read_text()
        loser = train_py(*args, "trainer.max_steps=7")  # 7: the loser's own mark, in any file it wrote
    finally:
        winner.send_signal(signal.SIGTERM)
        output, _ = winner.communicate(timeout=300)
    assert loser.returncode == 2, loser.stderr[-3000:]
    errors = [line for line in loser.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is in use by another sweep or run (pid" in errors[0], loser.stderr[-3000:]
    assert "#0 :" not in loser.stdout  # no job launched
    assert winner.returncode == 143, output[-3000:]  # the winner trained on, until the signal
    assert (sweep / "multirun.yaml").read_text() == multirun_yaml
    for path in sweep.rglob("*"):
        if path.is_file() and path.suffix in {".yaml", ".log", ".md", ".csv", ".json"}:
            text = path.read_text()
            assert "max_steps=7" not in text and "in use" not in text, path
    assert not (sweep / ".lock").exists()  # the winner released it when the signal ended its sweep
