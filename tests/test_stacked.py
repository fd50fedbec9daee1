"""The stacked launcher: a sweep's jobs that differ in lr and seed, trained as one fit, each member equal to its job.

The in-process tests drive the three phases of ``twolayer_lightning.stacked`` (prepare, fit, finish)
as the launcher does, and compare every member with the single run of the same overrides
(``twolayer_lightning.run``): every step's logged loss, the final weights, metrics.json. The slow
test runs ``python train.py -m hydra/launcher=stacked`` itself.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import errno
import importlib.util
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import hydra
import pytest
import torch

from twolayer_lightning import run, stacked
from twolayer_lightning.checkpoints import STAMP_KEY, StopOnSignal
from twolayer_lightning.cli import CONFIG_MODULE, sweep_objective
from twolayer_lightning.errors import TrainingDivergedError, TrainingInterruptedError
from twolayer_lightning.rundir import LOCK_FILE

STEPS = ["trainer.max_steps=60", "trainer.log_every_n_steps=20"]
# Keys a member's metrics.json has beyond its single run's, and those that differ by nature.
STACKED_ONLY = {"launcher", "group_size", "stacked_mode"}
DIFFERENT = {"fit_seconds", "versions"}
ROOT = Path(__file__).resolve().parents[1]


def compose(overrides: list[str], output_dir: Path):
    with hydra.initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra.compose(config_name="config", overrides=[*overrides, f"output_dir={output_dir}"])


def train_stacked(jobs: list[list[str]], root: Path, exact: bool = True) -> list[float]:
    """The launcher's three phases for ``jobs`` (one group): their objectives; job i writes into root/i."""
    members = [stacked.prepare(compose(job, root / str(i))) for i, job in enumerate(jobs)]
    fit = stacked.fit_stacked(members, exact)
    return [member_objective(member, len(members), exact, fit) for member in members]


def member_objective(member: stacked.Member, group_size: int, exact: bool, fit: stacked.StackedResult) -> float:
    """A member's job as the launcher runs it: its files, and its objective for the sweeper."""
    return sweep_objective(lambda: stacked.finish(member, group_size, exact, fit))


def train_alone(job: list[str], out: Path) -> None:
    with contextlib.suppress(TrainingDivergedError):  # metrics.json records it
        run(job, output_dir=out)


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def losses(run_dir: Path) -> list[float]:
    return [float(row["train_loss"]) for row in rows(run_dir) if row["train_loss"]]


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.ckpt", weights_only=True)["state_dict"]


def assert_same_run(member: Path, alone: Path) -> None:
    """Every logged value (the CSV, text for text) and metrics.json equal; the weights torch.equal."""
    assert rows(member) == rows(alone)
    got, want = metrics(member), metrics(alone)
    assert {k: v for k, v in got.items() if k not in STACKED_ONLY | DIFFERENT} == {
        k: v for k, v in want.items() if k not in DIFFERENT
    }
    if want["status"] == "ok":
        for name, tensor in weights(alone).items():
            assert torch.equal(weights(member)[name], tensor), name


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; this torch sees none")


@pytest.mark.parametrize(
    ("accelerator", "path"),
    [("cpu", "auto"), ("cpu", "direct"), pytest.param("gpu", "auto", marks=[pytest.mark.gpu, CUDA])],
)
def test_exact_members_equal_their_single_runs(tmp_path: Path, accelerator: str, path: str) -> None:
    settings = [f"trainer.accelerator={accelerator}", f"trainer.update_path={path}", *STEPS]
    jobs = [[f"optim.lr={lr}", f"seed={seed}", *settings] for lr in (1e-6, 2e-6) for seed in (0, 1)]
    objectives = train_stacked(jobs, tmp_path / "stacked")
    for i, job in enumerate(jobs):
        train_alone(job, tmp_path / "alone" / str(i))
        assert_same_run(tmp_path / "stacked" / str(i), tmp_path / "alone" / str(i))
        member = metrics(tmp_path / "stacked" / str(i))
        assert (member["launcher"], member["group_size"], member["stacked_mode"]) == ("stacked", 4, "exact")
        assert objectives[i] == member["train_loss"]
    assert len({metrics(tmp_path / "stacked" / str(i))["train_loss"] for i in range(4)}) == 4  # four different runs


def test_a_diverging_member_stops_alone(tmp_path: Path) -> None:
    good = [["optim.lr=1e-6", *STEPS], ["optim.lr=5e-7", "seed=3", *STEPS]]
    bad = ["optim.lr=1e-3", *STEPS]
    objectives = train_stacked([good[0], bad, good[1]], tmp_path / "stacked")
    train_alone(bad, tmp_path / "alone-bad")
    diverged = metrics(tmp_path / "stacked" / "1")
    assert diverged["status"] == "diverged" and objectives[1] == math.inf
    assert not (tmp_path / "stacked" / "1" / "last.ckpt").exists()  # as its single run: no checkpoint of nan weights
    assert_same_run(tmp_path / "stacked" / "1", tmp_path / "alone-bad")  # same step, same rows
    for i, job in zip((0, 2), good, strict=True):
        train_alone(job, tmp_path / "alone" / str(i))
        assert_same_run(tmp_path / "stacked" / str(i), tmp_path / "alone" / str(i))
        assert metrics(tmp_path / "stacked" / str(i))["global_step"] == 60


def test_batched_members_are_within_tolerance_of_their_single_runs(tmp_path: Path) -> None:
    jobs = [[f"optim.lr={lr}", f"seed={seed}", *STEPS] for lr in (5e-7, 1e-6) for seed in (0, 1)]
    train_stacked(jobs, tmp_path / "stacked", exact=False)
    for i, job in enumerate(jobs):
        train_alone(job, tmp_path / "alone" / str(i))
        got, want = (losses(tmp_path / kind / str(i)) for kind in ("stacked", "alone"))
        assert len(got) == len(want) == 60
        assert got[0] == want[0]  # the same start: same data, same initial weights
        # Over the steps where the loss is still above 1e-3 of its start (the tail of a converged run is
        # rounding noise): bmm sums in another order than mm, and the difference grows with the steps.
        relative = [abs(g - w) / w for g, w in zip(got, want, strict=True) if w > 1e-3 * want[0]]
        assert max(relative) < 1e-3
        member, alone = weights(tmp_path / "stacked" / str(i)), weights(tmp_path / "alone" / str(i))
        for name, tensor in alone.items():
            scale = tensor.abs().max()
            assert (member[name] - tensor).abs().max() <= 1e-4 * scale, name
        assert metrics(tmp_path / "stacked" / str(i))["stacked_mode"] == "batched"


def test_a_member_checkpoint_resumes_as_its_single_run(tmp_path: Path) -> None:
    jobs = [["optim.lr=1e-6", *STEPS], ["optim.lr=2e-6", *STEPS]]
    train_stacked(jobs, tmp_path / "stacked")
    longer = ["optim.lr=1e-6", "trainer.max_steps=100", "trainer.log_every_n_steps=20"]
    run([*longer, f"ckpt_path={tmp_path / 'stacked' / '0' / 'last.ckpt'}"], output_dir=tmp_path / "resumed")
    run(longer, output_dir=tmp_path / "alone")
    assert metrics(tmp_path / "resumed")["train_loss"] == metrics(tmp_path / "alone")["train_loss"]
    for name, tensor in weights(tmp_path / "alone").items():
        assert torch.equal(weights(tmp_path / "resumed")[name], tensor), name


def test_only_lr_and_seed_may_differ_within_a_group(tmp_path: Path) -> None:
    base = compose(["optim.lr=1e-6", "seed=0"], tmp_path)
    assert stacked.group_key(base) == stacked.group_key(compose(["optim.lr=3e-6", "seed=7"], tmp_path))
    assert stacked.group_key(base) != stacked.group_key(compose(["model.hidden_features=50"], tmp_path))
    assert stacked.why_alone(base) is None
    assert "mini-batches" in stacked.why_alone(
        compose(["data=files", "data.x_path=x.npy", "data.batch_size=8"], tmp_path)
    )
    assert "update_path" in stacked.why_alone(compose(["trainer.update_path=lightning"], tmp_path))
    assert "several" in stacked.why_alone(compose(["trainer=ddp"], tmp_path))


JOBS = [
    ["optim.lr=1e-6", "seed=0"],
    ["optim.lr=2e-06", "seed=3"],  # derived from the first
    ["optim.lr=auto", "seed=1"],
    ["optim.lr=3e-7", "seed=abc"],  # an int key given a string: Hydra's own error
    ["optim.lr=1e-7", "model.hidden_features=50", "seed=2"],  # another shape: composed
    ["optim.lr=5e-7", "model.hidden_features=50", "seed=9"],
    ["seed=4", "optim.lr=1e-7"],
    ["optim.lr=1e-6", "hydra.job.config.override_dirname.kv_sep=-", "seed=5"],
    ["optim.lr=2e-6", "hydra.job.config.override_dirname.kv_sep=-", "seed=6"],
]


@contextlib.contextmanager
def sweep_loader(tmp_path: Path):
    """Hydra's config loader and the master config of a stacked sweep, as the launcher gets them."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    with hydra.initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration(
            config_name="config",
            overrides=["hydra/launcher=stacked", f"hydra.sweep.dir={tmp_path}"],
            run_mode=RunMode.MULTIRUN,
        )
        yield loader, master


def assert_same_configs(derived, loader, master) -> None:
    """Every job of JOBS gets from ``derived`` the very config Hydra composes for its overrides (values, hydra
    node, struct flag, resolver cache), or the same error."""
    from omegaconf import OmegaConf

    def outcome(load, overrides):
        try:
            config = load(master, overrides)
        except Exception as err:  # the comparison is of whatever each raises
            return type(err), str(err)
        content = OmegaConf.to_yaml(config)
        return content, config._metadata.resolver_cache, OmegaConf.is_struct(config)

    for job in JOBS:
        assert outcome(derived.load_sweep_config, job) == outcome(loader.load_sweep_config, job), job


def test_derived_sweep_configs_equal_hydras_compositions(tmp_path: Path) -> None:
    """The launcher gives a job the config of an earlier job with its own lr and seed set: it must be the very
    config Hydra composes for the job's overrides, or the same error."""
    from hydra_plugins.twolayer_lightning_stacked._core import DerivedSweepConfigs

    with sweep_loader(tmp_path) as (loader, master):
        derived = DerivedSweepConfigs(loader)
        assert_same_configs(derived, loader, master)
        composed = [shape for _, shape in derived.composed]
        assert len(composed) == 4  # lr/seed, with a hidden size, seed before lr, with a kv_sep


@pytest.mark.parametrize("hydra_code", ["missing", "changed"])
def test_without_hydras_override_code_every_job_is_composed_and_one_line_says_so(
    tmp_path: Path, monkeypatch, caplog, hydra_code: str
) -> None:
    """A Hydra release whose private override code is gone or takes other parameters: the launcher composes
    every job itself (the same configs, the same errors) and one warning line names the supported versions."""
    from hydra_plugins.twolayer_lightning_stacked._core import DerivedSweepConfigs

    internal = types.ModuleType("hydra._internal.config_loader_impl")  # what such a release might hold
    if hydra_code == "changed":
        internal.ConfigLoaderImpl = type(
            "ConfigLoaderImpl", (), {"_apply_overrides_to_config": staticmethod(lambda overrides, cfg, strict: None)}
        )
        internal.get_overrides_dirname = lambda overrides, exclude_keys, item_sep, kv_sep: ""
    pinned = re.search(r'"hydra-core([^"]*)"', (ROOT / "pyproject.toml").read_text()).group(1)
    with sweep_loader(tmp_path) as (loader, master):
        with monkeypatch.context() as patch:  # Hydra's own composition keeps its real code
            patch.setitem(sys.modules, "hydra._internal.config_loader_impl", internal)
            derived = DerivedSweepConfigs(loader)
        assert_same_configs(derived, loader, master)
        assert not derived.composed  # nothing derived: Hydra composed each job
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1 and f"hydra-core{pinned}" in warnings[0], warnings


def test_hydras_plugin_scan_loads_nothing_heavy_or_private() -> None:
    """Hydra imports the launcher module whenever any Hydra app starts: it names no private Hydra module, and
    importing it loads neither torch, Lightning, the package nor the launcher's work (_core)."""
    name = "hydra_plugins.twolayer_lightning_stacked.stacked_launcher"
    source = Path(importlib.util.find_spec(name).origin).read_text()
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.parse(source).body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert not [module for module in imported if "._" in f".{module}"], imported
    code = f"import sys, {name}; print(' '.join(sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    heavy = {"torch", "lightning", "lightning_fabric", "pytorch_lightning", "twolayer_lightning"}
    assert not [module for module in loaded if module.split(".")[0] in heavy], loaded
    assert "hydra_plugins.twolayer_lightning_stacked._core" not in loaded


def test_a_group_larger_than_memory_is_split(tmp_path: Path) -> None:
    members = [stacked.prepare(compose([f"seed={seed}"], tmp_path / str(seed))) for seed in range(5)]
    try:
        kept, work = stacked.member_bytes(members[0], exact=True)
        assert stacked.chunks(members, True, free_bytes=10**12, fraction=0.5) == [members]
        # Room for two members' weights and data, and one update's work space.
        parts = stacked.chunks(members, True, free_bytes=2 * (2 * kept + work), fraction=0.5)
        assert [len(part) for part in parts] == [2, 2, 1]
        assert [m for part in parts for m in part] == members
        kept, work = stacked.member_bytes(members[0], exact=False)
        parts = stacked.chunks(members, False, free_bytes=2 * 3 * (kept + work), fraction=0.5)  # batched: all of it
        assert [len(part) for part in parts] == [3, 2]
    finally:
        for member in members:
            member.lock.release()


@pytest.mark.slow
def test_stacked_sweep_from_the_command_line(tmp_path: Path, train_py) -> None:
    """One command: per-job dirs and a summary as any sweep's; a bad job fails alone; a job of other
    settings runs on its own."""
    sweep = tmp_path / "sweep"
    result = train_py(
        "-m",
        "hydra/launcher=stacked",
        "optim.lr=1e-6,-1,2e-6",
        "model.hidden_features=100,50",
        "trainer.max_steps=30",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = list(csv.DictReader((sweep / "summary.csv").open()))
    assert sorted(row["status"] for row in summary) == ["failed", "failed", "ok", "ok", "ok", "ok"]
    for job in sweep.iterdir():
        if not job.is_dir() or not (job / "metrics.json").exists():
            continue
        done = metrics(job)
        assert done["launcher"] == "stacked" and done["group_size"] == 2  # lr 1e-6 and 2e-6 of each hidden size
        assert (job / "last.ckpt").is_file() and (job / "loss.png").is_file() and (job / ".hydra").is_dir()
    failed = [row for row in summary if row["status"] == "failed"]
    assert all("optim.lr" in row["error"] for row in failed), failed


@pytest.mark.slow
def test_a_signal_stops_the_stacked_fit_and_each_member_resumes_bitwise(tmp_path: Path, signal_train_py) -> None:
    every = ["trainer.log_every_n_steps=200"]  # 200 updates per training step
    sweep = tmp_path / "sweep"
    result = signal_train_py(
        "-m",
        "hydra/launcher=stacked",
        "optim.lr=1e-6,1e-3,5e-7",  # job 1 diverges at once, before the signal
        "trainer.max_steps=1000000",
        *every,
        f"hydra.sweep.dir={sweep}",
        ready=" members training",  # the stacked fit's first report: training is under way
        delay=0.5,
    )
    assert result.returncode == 143, result.stdout[-3000:]
    assert "Traceback" not in result.stdout
    statuses = [metrics(sweep / str(i))["status"] for i in range(3)]
    assert statuses == ["interrupted", "diverged", "interrupted"]
    stopped = metrics(sweep / "0")["global_step"]
    assert metrics(sweep / "2")["global_step"] == stopped and len(losses(sweep / "0")) == stopped
    assert not (sweep / "1" / "last.ckpt").exists()
    total = stopped + 100
    run([*every, "optim.lr=1e-6", f"trainer.max_steps={total}", "ckpt_path=last"], output_dir=sweep / "0")
    run([*every, "optim.lr=1e-6", f"trainer.max_steps={total}"], output_dir=tmp_path / "whole")
    # Every step once, the same losses (the interrupted step's row has the train metrics of a report, as in a
    # single run that is interrupted).
    assert losses(sweep / "0") == losses(tmp_path / "whole")
    for name, tensor in weights(tmp_path / "whole").items():
        assert torch.equal(weights(sweep / "0")[name], tensor), name


def test_a_full_disk_fails_that_member_alone_with_one_line(tmp_path: Path, monkeypatch, caplog) -> None:
    def plot_on_a_full_disk(run_dir: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "loss.png"))

    members = [stacked.prepare(compose([f"seed={seed}", *STEPS], tmp_path / str(seed))) for seed in range(2)]
    fit = stacked.fit_stacked(members, exact=True)
    monkeypatch.setattr("twolayer_lightning.results.plot_run", plot_on_a_full_disk)
    assert member_objective(members[0], 2, True, fit) == math.inf
    assert "no space left on the device writing" in caplog.text
    monkeypatch.undo()
    assert member_objective(members[1], 2, True, fit) == metrics(tmp_path / "1")["train_loss"]  # the other goes on
    assert not any((tmp_path / str(seed) / LOCK_FILE).exists() for seed in range(2))


class SigtermAtStep:
    """Sends this process SIGTERM at the end of the training step that reaches ``step`` updates (or in which a
    single run diverged): a scheduler's preemption at a known update, for a single run and a stacked fit alike."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __call__(self, trainer, pl_module, *args: object) -> None:  # set on the class: called unbound
        if trainer.global_step >= self.step or getattr(pl_module, "diverged_at", None) is not None:
            os.kill(os.getpid(), signal.SIGTERM)


def final_line(end: Callable[[], object], run_dir: Path, caplog) -> str:
    """The line a run ends with: its `done:` log line or the error it raises (its run dir and timing left out)."""
    caplog.clear()
    try:
        end()
    except (TrainingDivergedError, TrainingInterruptedError) as err:
        line = f"{type(err).__name__}: {err}"
    else:
        line = next(r.getMessage() for r in reversed(caplog.records) if r.getMessage().startswith("done: "))
    return re.sub(r", [0-9.]+ s in [^;]*;", ";", line).replace(str(run_dir), "<run dir>")


def checkpoint_of(run_dir: Path) -> dict | None:
    path = run_dir / "last.ckpt"
    return torch.load(path, weights_only=True) if path.exists() else None


@pytest.mark.parametrize(
    "signalled", [False, True], ids=["ok-and-diverged", "interrupted-and-diverged-then-interrupted"]
)
def test_a_member_ends_as_its_single_run_does(tmp_path: Path, monkeypatch, caplog, signalled: bool) -> None:
    """ok, diverged, interrupted, and diverged-then-interrupted: metrics.json (less the stacked keys and timings),
    last.ckpt and the final line of each member equal those of its single run."""
    caplog.set_level(logging.INFO)
    steps = ["trainer.max_steps=60", "trainer.log_every_n_steps=10"]
    jobs = [["optim.lr=1e-6", *steps], ["optim.lr=1e-3", *steps]]  # the second diverges at once
    if signalled:
        monkeypatch.setattr(StopOnSignal, "on_train_batch_end", SigtermAtStep(20), raising=False)
    alone = [
        final_line(lambda job=job, out=out: run(job, output_dir=out), out, caplog)
        for job, out in ((job, tmp_path / "alone" / str(i)) for i, job in enumerate(jobs))
    ]
    members = [stacked.prepare(compose(job, tmp_path / "stacked" / str(i))) for i, job in enumerate(jobs)]
    fit = stacked.fit_stacked(members, exact=True)
    together = [final_line(lambda m=m: stacked.finish(m, len(members), True, fit), m.out, caplog) for m in members]
    assert together == alone
    statuses = [metrics(tmp_path / "alone" / str(i))["status"] for i in range(len(jobs))]
    assert statuses == (["interrupted", "diverged"] if signalled else ["ok", "diverged"])
    for i in range(len(jobs)):
        got, want = metrics(tmp_path / "stacked" / str(i)), metrics(tmp_path / "alone" / str(i))
        assert {k: v for k, v in got.items() if k not in STACKED_ONLY | DIFFERENT} == {
            k: v for k, v in want.items() if k not in DIFFERENT
        }
        assert ("signal" in want) == signalled
        member_ckpt, single_ckpt = (
            checkpoint_of(tmp_path / "stacked" / str(i)),
            checkpoint_of(tmp_path / "alone" / str(i)),
        )
        assert (member_ckpt is None) == (single_ckpt is None) == (want["status"] == "diverged")
        if single_ckpt is not None:
            assert set(member_ckpt) == set(single_ckpt)
            for key in ("global_step", "epoch", "hyper_parameters", "loops", "optimizer_states", STAMP_KEY):
                assert member_ckpt[key] == single_ckpt[key], key
            for name, tensor in single_ckpt["state_dict"].items():
                assert torch.equal(member_ckpt["state_dict"][name], tensor), name


@pytest.mark.parametrize("keep", [0, 2])
def test_members_take_periodic_checkpoints_that_resume_as_their_single_runs(tmp_path: Path, keep: int) -> None:
    """trainer.checkpoint_every_n_steps in a stacked fit: each member's step-N.ckpt holds what its single run's
    holds at that update (the newest `keep`), and a resume from it ends with the single run's weights."""
    every = ["trainer.max_steps=60", "trainer.log_every_n_steps=10", "trainer.checkpoint_every_n_steps=20"]
    jobs = [[f"seed={seed}", *every, f"trainer.keep_checkpoints={keep}"] for seed in (0, 1)]
    assert stacked.why_alone(compose(jobs[0], tmp_path / "x")) is None  # periodic checkpoints stack
    train_stacked(jobs, tmp_path / "stacked")
    for i, job in enumerate(jobs):
        run(job, output_dir=tmp_path / "alone" / str(i))
        member_dir, alone_dir = (
            tmp_path / "stacked" / str(i) / "checkpoints",
            tmp_path / "alone" / str(i) / "checkpoints",
        )
        assert sorted(p.name for p in member_dir.iterdir()) == sorted(p.name for p in alone_dir.iterdir())
        for path in member_dir.iterdir():
            member, single = (torch.load(d / path.name, weights_only=True) for d in (member_dir, alone_dir))
            assert (member["global_step"], member["loops"]) == (single["global_step"], single["loops"]), path.name
            assert all(torch.equal(member["state_dict"][k], v) for k, v in single["state_dict"].items()), path.name
        resumed = run([*job, f"ckpt_path={member_dir / 'step-40.ckpt'}"], output_dir=tmp_path / "resumed" / str(i))
        assert resumed["global_step"] == 60 and resumed["resumed_from"]["global_step"] == 40
        for name, tensor in weights(tmp_path / "alone" / str(i)).items():
            assert torch.equal(weights(tmp_path / "resumed" / str(i))[name], tensor), name


def test_batched_members_checkpoint_the_weights_they_have_trained(tmp_path: Path) -> None:
    """Batched mode trains stacked copies: a periodic checkpoint still holds each member's weights of that update."""
    every = ["trainer.max_steps=40", "trainer.log_every_n_steps=10", "trainer.checkpoint_every_n_steps=20"]
    train_stacked([[f"seed={seed}", *every] for seed in (0, 1)], tmp_path, exact=False)
    for i in range(2):
        at_20 = torch.load(tmp_path / str(i) / "checkpoints" / "step-20.ckpt", weights_only=True)["state_dict"]
        at_40 = torch.load(tmp_path / str(i) / "checkpoints" / "step-40.ckpt", weights_only=True)["state_dict"]
        assert all(torch.equal(at_40[name], tensor) for name, tensor in weights(tmp_path / str(i)).items())
        assert not torch.equal(at_20["net.w1"], at_40["net.w1"])  # each holds its own update's weights
