"""Runs that survive: signals, resumes, full disks, bad checkpoints and run dirs in use.

Each test does to a run what happens to one in practice (a SIGTERM from a scheduler, Ctrl-C, a
full disk during a save, a truncated file, a second run into the same folder) and checks what a
user relies on afterwards: the exit status, one line, metrics.json, and a checkpoint that resumes
bitwise as if nothing had happened.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from twolayer_lightning import ConfigError, SyntheticRegressionData, TrainingInterruptedError, run, training
from twolayer_lightning.checkpoints import (
    CHECKPOINT_FORMAT,
    STAMP_KEY,
    AtomicCheckpointIO,
    DiskFullError,
    StopOnSignal,
)
from twolayer_lightning.cli import main
from twolayer_lightning.errors import describe_error
from twolayer_lightning.rundir import LOCK_FILE, RunDirLock


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def loss_rows(run_dir: Path) -> list[tuple[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        return [(row["step"], row["train_loss"]) for row in csv.DictReader(f) if row.get("train_loss")]


def one_error_line(argv: list[str], tmp_path: Path, monkeypatch, capsys) -> str:
    """Run `python train.py *argv` in this process; it must end with exit 2 and exactly one error line."""
    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()  # what came before (a run() of the test, logging to an earlier test's handlers)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# --- signals -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_the_last_update_and_the_resume_is_bitwise(tmp_path, signum, code, signal_train_py):
    every = ["trainer.log_every_n_steps=200", "trainer.checkpoint_every_n_steps=0"]  # 200 updates per step
    result = signal_train_py(
        f"hydra.run.dir={tmp_path / 'run'}",
        "trainer.max_steps=1000000",
        *every,
        ready=" loss ",  # `step t  loss v`: training is under way
        signum=signum,
        delay=0.5,  # into the next training step, so that the signal lands between its updates
    )
    assert result.returncode == code, result.stdout[-3000:]
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ckpt_path=last" in errors[0], result.stdout[-3000:]
    assert "Traceback" not in result.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"
    assert metrics["signal"] == signal.Signals(signum).name
    stopped = metrics["global_step"]
    assert torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["global_step"] == stopped
    assert len(loss_rows(tmp_path / "run")) == stopped  # every finished update's loss, none other

    total = stopped + 100
    resumed = run([*every, f"trainer.max_steps={total}", "ckpt_path=last"], output_dir=tmp_path / "run")
    run([*every, f"trainer.max_steps={total}"], output_dir=tmp_path / "whole")
    assert resumed["status"] == "ok" and resumed["global_step"] == total
    assert resumed["resumed_from"]["global_step"] == stopped
    assert same_weights(tmp_path / "run" / "last.ckpt", tmp_path / "whole" / "last.ckpt")
    assert loss_rows(tmp_path / "run") == loss_rows(tmp_path / "whole")  # every step once, the same losses
    assert not (tmp_path / "run" / LOCK_FILE).exists()


class CtrlCTwiceInAnUpdate(L.LightningModule):
    """Presses Ctrl-C twice inside its first training step: the second comes while that update runs."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        os.kill(os.getpid(), signal.SIGINT)  # the first: stop after this update
        os.kill(os.getpid(), signal.SIGINT)  # the second: stop now
        return (self.w * batch).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_second_ctrl_c_during_an_update_stops_at_once_with_one_line_and_exit_130(tmp_path, capsys):
    before = signal.getsignal(signal.SIGINT)
    trainer = L.Trainer(
        max_steps=5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[StopOnSignal("test")],
        default_root_dir=tmp_path,
    )
    # Lightning turns a KeyboardInterrupt in a fit into sys.exit(1); the second Ctrl-C must say 130.
    with pytest.raises(SystemExit) as info:
        trainer.fit(CtrlCTwiceInAnUpdate(), torch.utils.data.DataLoader(torch.ones(4, 1)))
    assert info.value.code == 130
    assert trainer.global_step == 0  # the update it was in did not finish
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: interrupted by a second SIGINT: stopped at once, without saving (checkpoints saved before are kept)"
    ]
    assert signal.getsignal(signal.SIGINT) is before  # handlers are back


def test_ctrl_c_acts_as_before_once_a_fit_has_ended(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    run(["trainer.max_steps=3", "logger=none"], output_dir=tmp_path / "run")
    assert signal.getsignal(signal.SIGINT) is before  # not the fit's handler, which would swallow a later Ctrl-C


@pytest.mark.slow
def test_two_ctrl_c_50_ms_apart_end_with_exit_130_one_line_and_files_that_tell_the_truth(tmp_path):
    """The first Ctrl-C stops the fit within its update (milliseconds), so the second mostly comes while
    last.ckpt and metrics.json are written, and waits until they are; on a loaded machine it may still
    find the update running, and then stops at once without saving. Either way: 130, one line."""
    process = subprocess.Popen(
        [sys.executable, "train.py", f"hydra.run.dir={tmp_path / 'run'}", "trainer.max_steps=1000000"],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in process.stdout:
        if " loss " in line:  # training is under way
            break
    time.sleep(0.5)
    os.kill(process.pid, signal.SIGINT)
    time.sleep(0.05)
    os.kill(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
    if "second SIGINT" in errors[0]:
        assert not (tmp_path / "run" / "metrics.json").exists()  # nothing claims a result
    else:
        assert "ckpt_path=last" in errors[0], output[-3000:]
        metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
        assert metrics["status"] == "interrupted" and metrics["signal"] == "SIGINT"
        saved = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["global_step"]
        assert saved == metrics["global_step"]
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_a_signal_after_the_fit_waits_until_the_files_are_written(tmp_path, monkeypatch):
    def plot_and_get_a_sigterm(run_dir: Path) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # held: without that, this process would end here

    monkeypatch.setattr("twolayer_lightning.results.plot_run", plot_and_get_a_sigterm)
    with pytest.raises(TrainingInterruptedError, match="after training had finished") as info:
        run(["trainer.max_steps=3"], output_dir=tmp_path / "run")
    assert info.value.exit_code == 143
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "ok"  # it did finish
    assert torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers are back


@pytest.mark.slow
def test_an_interrupted_sweep_stops_and_summarises_with_the_failed_and_interrupted_jobs(tmp_path, signal_train_py):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    sweep = tmp_path / "sweep"
    result = signal_train_py(
        "-m",
        "seed=0,1",  # varies slowest: jobs 2 and 3 (seed=1) must never start
        f"ckpt_path={empty},null",  # job 0: a bad checkpoint (failed), job 1: runs until the signal
        "trainer.max_steps=1000000",
        f"hydra.sweep.dir={sweep}",
        ready=" loss ",
    )
    assert result.returncode == 143, result.stdout[-3000:]
    with (sweep / "summary.csv").open(newline="") as f:
        rows = {row["job"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"0", "1"}  # nothing launched after the signal
    assert rows["0"]["status"] == "failed" and "empty file" in rows["0"]["error"]
    assert rows["1"]["status"] == "interrupted"
    assert "interrupted" in (sweep / "summary.md").read_text()


# --- resume: ckpt_path=last, the loss history, lr ---------------------------------------------------


def test_ckpt_path_last_takes_the_newest_checkpoint_that_loads_and_keep_checkpoints_prunes(tmp_path):
    out = tmp_path / "run"
    overrides = ["logger=none", "trainer.max_steps=40", "trainer.checkpoint_every_n_steps=10"]
    run([*overrides, "trainer.keep_checkpoints=2"], output_dir=out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-30.ckpt", "step-40.ckpt"]
    # A run killed without a status: last.ckpt cut short (as by a kill during an old, non-atomic save).
    (out / "metrics.json").unlink()
    (out / "last.ckpt").write_bytes((out / "last.ckpt").read_bytes()[:1000])
    with pytest.raises(ConfigError, match="ckpt_path=last"):
        run(overrides, output_dir=out)  # a fresh run would overwrite it: refused, with the command to resume
    resumed = run([*overrides[:1], "trainer.max_steps=50", "ckpt_path=last"], output_dir=out)
    assert resumed["resumed_from"]["ckpt_path"] == str(out / "checkpoints" / "step-40.ckpt")
    assert resumed["global_step"] == 50
    with pytest.raises(ConfigError, match=r"max_steps=50 leaves nothing to train .* use trainer.max_steps > 50"):
        run(["trainer.max_steps=50", f"ckpt_path={out / 'last.ckpt'}"], output_dir=tmp_path / "more")
    with pytest.raises(ConfigError, match="found no complete checkpoint"):
        run(["ckpt_path=last"], output_dir=tmp_path / "empty")


def test_a_resume_with_another_lr_trains_at_that_lr_and_says_so(tmp_path, caplog):
    first = run(["logger=none", "trainer.max_steps=10"], output_dir=tmp_path / "a")
    ckpt = tmp_path / "a" / "last.ckpt"
    caplog.set_level("INFO")
    resumed = run(
        ["logger=none", "trainer.max_steps=20", "optim.lr=2e-6", f"ckpt_path={ckpt}"], output_dir=tmp_path / "b"
    )
    assert resumed["lr"] == 2e-6 and resumed["resumed_from"]["lr"] == first["lr"] == 1e-6
    assert any("optim.lr=2e-06 for the remaining steps" in r.getMessage() for r in caplog.records)
    # The seed's loop from the checkpoint's weights, 10 updates at the new lr.
    data = SyntheticRegressionData(64, 1000, 10, generator=torch.Generator().manual_seed(0))
    w1, w2 = (weights(ckpt)[k].clone().requires_grad_() for k in ("net.w1", "net.w2"))
    for _ in range(10):
        loss = (data.x.mm(w1).clamp(min=0).mm(w2) - data.y).pow(2).sum()
        loss.backward()
        with torch.no_grad():
            for w in (w1, w2):
                w -= 2e-6 * w.grad
                w.grad.zero_()
    resumed_weights = weights(tmp_path / "b" / "last.ckpt")
    assert torch.equal(resumed_weights["net.w1"], w1.detach())
    assert torch.equal(resumed_weights["net.w2"], w2.detach())


# --- checkpoints: atomic writes, a full disk, bad files ---------------------------------------------


def test_a_full_disk_keeps_the_previous_checkpoints_and_names_the_space_needed(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # Lightning's default save would write here
    (tmp_path / "tmp").mkdir()
    real_fsync, calls = os.fsync, []

    def fsync_fails_at_the_second_checkpoint(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # a checkpoint's bytes, not its folder
            calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr("twolayer_lightning.checkpoints.os.fsync", fsync_fails_at_the_second_checkpoint)
    out = tmp_path / "run"
    with pytest.raises(DiskFullError) as info:
        run(["logger=none", "trainer.max_steps=30", "trainer.checkpoint_every_n_steps=10"], output_dir=out)
    line = describe_error(info.value)
    assert line.startswith("error: no space left") and "step-20.ckpt" in line and "bytes" in line
    assert "\n" not in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-10.ckpt"]  # no partial file
    assert torch.load(out / "checkpoints" / "step-10.ckpt", weights_only=True)["global_step"] == 10
    assert not any((tmp_path / "tmp").iterdir())
    assert not (out / "metrics.json").exists()  # nothing claims a result
    monkeypatch.setattr("twolayer_lightning.checkpoints.os.fsync", real_fsync)
    resumed = run(["logger=none", "trainer.max_steps=30", "ckpt_path=last"], output_dir=out)  # once space is back
    assert resumed["resumed_from"]["global_step"] == 10 and resumed["global_step"] == 30


def test_a_full_disk_while_writing_anything_else_is_one_line(tmp_path, monkeypatch):
    def plot_on_a_full_disk(run_dir: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "loss.png"))

    monkeypatch.setattr("twolayer_lightning.results.plot_run", plot_on_a_full_disk)
    with pytest.raises(DiskFullError) as info:
        run(["trainer.max_steps=2"], output_dir=tmp_path / "run")
    assert describe_error(info.value).startswith(f"error: no space left on the device writing {tmp_path / 'run'}")


def test_ctrl_c_outside_a_fit_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("twolayer_lightning.cli._hydra_main", interrupted)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.startswith("error: interrupted by SIGINT")


def test_an_atomic_save_replaces_the_file_whole(tmp_path):
    path = tmp_path / "a.ckpt"
    AtomicCheckpointIO().save_checkpoint({"x": torch.arange(3)}, path)
    AtomicCheckpointIO().save_checkpoint({"x": torch.arange(5)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(5))
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A good checkpoint, and broken or foreign ones made from it."""
    folder = tmp_path_factory.mktemp("ckpts")
    run(["logger=none", "trainer.max_steps=2"], output_dir=folder / "good")
    good = folder / "good" / "last.ckpt"
    data = good.read_bytes()
    files = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "random bytes": os.urandom(4096),
    }
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name.replace(' ', '_')}.ckpt"
        paths[name].write_bytes(content)
    paths["not lightning"] = folder / "dict.ckpt"
    torch.save({"w": torch.ones(2)}, paths["not lightning"])
    checkpoint = torch.load(good, weights_only=True)
    paths["another model"] = folder / "other_model.ckpt"
    torch.save({**checkpoint, "hyper_parameters": {"num_classes": 3}}, paths["another model"])
    paths["another version"] = folder / "other_version.ckpt"
    torch.save({**checkpoint, STAMP_KEY: {"format": CHECKPOINT_FORMAT + 1, "version": "9.0"}}, paths["another version"])
    return paths


BAD = {
    "empty": "empty file",
    "truncated": "cannot be read as a checkpoint",
    "random bytes": "cannot be read as a checkpoint",
    "not lightning": "not a Lightning checkpoint",
    "another model": "another model",
    "another version": "format",
}


@pytest.mark.parametrize("mode", ["train", "predict"])
@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_checkpoint_gets_one_line_and_exit_2(tmp_path, monkeypatch, capsys, bad_checkpoints, kind, mode):
    out = tmp_path / "run"
    line = one_error_line(
        [f"mode={mode}", f"ckpt_path={bad_checkpoints[kind]}", f"hydra.run.dir={out}"], tmp_path, monkeypatch, capsys
    )
    assert BAD[kind] in line and str(bad_checkpoints[kind]) in line
    assert not (out / "metrics.json").exists() and not (out / LOCK_FILE).exists()


# --- run dirs ------------------------------------------------------------------------------------


def test_a_refused_rerun_touches_nothing_of_the_finished_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    run(["logger=none", "trainer.max_steps=2"], output_dir=out)
    (out / ".hydra").mkdir()
    (out / ".hydra" / "config.yaml").write_text("the finished run's config\n")
    (out / "train.log").write_text("the finished run's log\n")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    line = one_error_line([f"hydra.run.dir={out}", "trainer.max_steps=3"], tmp_path, monkeypatch, capsys)
    assert "already holds a finished run" in line
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()} == before


def test_a_dir_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_FILE).write_text(f"{sleeper.pid} {os.uname().nodename}\n")
        line = one_error_line([f"hydra.run.dir={out}", "logger=none"], tmp_path, monkeypatch, capsys)
        assert f"in use by another run (pid {sleeper.pid}" in line
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # no .hydra, no train.log
    finally:
        sleeper.kill()
        sleeper.wait()
    # The owner is gone (as after a kill -9): the lock is stale and the next run takes it over.
    metrics = run(["logger=none", "trainer.max_steps=2"], output_dir=out)
    assert metrics["status"] == "ok" and not (out / LOCK_FILE).exists()


def test_a_lock_is_reentrant_in_its_own_process_only(tmp_path):
    lock = RunDirLock(tmp_path)
    assert lock.acquire() is True
    assert RunDirLock(tmp_path).acquire() is False  # the Hydra callback took it, then train() again
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_file_in_the_way_of_the_run_dir_gets_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "taken").write_text("a file")
    line = one_error_line([f"hydra.run.dir={tmp_path / 'taken' / 'run'}"], tmp_path, monkeypatch, capsys)
    assert "is a file, not a folder" in line


def test_ckpt_path_last_into_a_dir_without_checkpoints_writes_nothing(tmp_path, monkeypatch, capsys):
    line = one_error_line([f"hydra.run.dir={tmp_path / 'none'}", "ckpt_path=last"], tmp_path, monkeypatch, capsys)
    assert "ckpt_path=last found no checkpoint" in line
    assert not (tmp_path / "none").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_dir_gets_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        line = one_error_line([f"hydra.run.dir={tmp_path / 'ro' / 'run'}"], tmp_path, monkeypatch, capsys)
    finally:
        (tmp_path / "ro").chmod(0o700)
    assert "not writable" in line


def test_an_interrupted_run_dir_takes_only_a_resume(tmp_path):
    out = tmp_path / "run"
    run(["logger=none", "trainer.max_steps=5"], output_dir=out)
    metrics = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps({**metrics, "status": "interrupted"}))
    with pytest.raises(ConfigError, match="holds an interrupted run; resume it with"):
        run(["logger=none", "trainer.max_steps=5"], output_dir=out)
    assert run(["logger=none", "trainer.max_steps=8", "ckpt_path=last"], output_dir=out)["global_step"] == 8


@pytest.mark.parametrize(
    ("where", "signum"),
    [
        ("twolayer_lightning.training.make_data", signal.SIGTERM),
        ("twolayer_lightning.training.search_lr", signal.SIGINT),
    ],
)
def test_a_signal_while_the_run_is_set_up_ends_it_with_one_line_and_a_record(tmp_path, monkeypatch, where, signum):
    """SIGTERM while the data loads, Ctrl-C in the lr range test: one line, exit 128 + signal, metrics.json says
    interrupted, the lock is gone, and the folder takes the run again (nothing was trained to resume)."""
    original = getattr(training, where.rsplit(".", 1)[1])

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signum)  # arrives while this stage runs, as a scheduler's or a user's would
        return original(*args, **kwargs)

    monkeypatch.setattr(where, signalled)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterruptedError, match=r"while the run was set up.*start it again") as info:
        run(["optim.lr=auto", "trainer.max_steps=20"], output_dir=out)
    assert info.value.exit_code == 128 + signum
    assert json.loads((out / "metrics.json").read_text())["status"] == "interrupted"
    assert not (out / LOCK_FILE).exists() and not (out / "last.ckpt").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers are back
    monkeypatch.undo()
    assert run(["trainer.max_steps=20"], output_dir=out)["status"] == "ok"
