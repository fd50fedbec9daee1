"""Run dirs: what may start in a folder, and one run at a time in it.

:func:`check_run_dir` refuses, with one line each, a folder that is a file, cannot be written, or
already holds a finished run (``metrics.json`` with a status other than ``interrupted``); a run
that stopped early with a checkpoint (interrupted, or killed with no status) may only be resumed
there (``ckpt_path=last``); one interrupted before it saved anything may start again.
:class:`RunDirLock` keeps a second process out of a folder in use: the lock file holds its owner's
pid and host, and a lock whose process is gone (a kill -9) is taken over. :class:`RunDirGuard`
runs both as a Hydra callback before Hydra writes ``.hydra/`` or opens ``train.log``, so a refused
run touches nothing of the run it was refused for.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from twolayer_lightning.config import validate
from twolayer_lightning.errors import ConfigError

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
LOCK_FILE = ".lock"
FINISHED_ELSEWHERE = "choose another dir (hydra.run.dir=... or run(..., output_dir=...))"


_started_with: list[str] = []  # the command line's words for this process's runs, once cli.main has said them


def started_from_command_line(program: str) -> None:
    """Say that this process's runs come from the command line ``program`` (``sys.argv[0]``), so that the
    commands that messages suggest use its words; without it they speak of ``run()``, the library call."""
    name = Path(program).name
    words = {"__main__.py": "python -m twolayer_lightning", "twolayer-train": "twolayer-train"}
    _started_with[:] = [words.get(name, f"python {name}")]


def command() -> str | None:
    """The command line that started this process's runs (``python train.py``, ``python -m
    twolayer_lightning``, ``twolayer-train``), or None when the package is used as a library."""
    return _started_with[0] if _started_with else None


# Set beside HYDRA_FULL_ERROR=1 by the entry point (cli.main), which sets that to get Hydra's errors
# as exceptions: tells its own setting from a user's, also in the DDP ranks that inherit both.
FULL_ERROR_MARKER = "TWOLAYER_LIGHTNING_SET_HYDRA_FULL_ERROR"


def user_wants_tracebacks() -> bool:
    """HYDRA_FULL_ERROR=1 set by the user (who gets tracebacks then, not one-line errors), not by the entry point."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1" and FULL_ERROR_MARKER not in os.environ


def resume_hint(run_dir: Path) -> str:
    """How to resume the run in ``run_dir`` from its newest checkpoint, in the terms the run was started in."""
    started_with = command()
    if started_with is None:
        return f'run([<the run\'s overrides>, "ckpt_path=last"], output_dir="{run_dir}")'
    return f"{started_with} hydra.run.dir={run_dir} ckpt_path=last <the run's other overrides>"


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint that ``ckpt_path=last`` could resume."""
    return (
        (run_dir / "last.ckpt").is_file()
        or any(run_dir.glob("checkpoints/step-*.ckpt"))
        or any(run_dir.glob("hpc_ckpt_*.ckpt"))
    )


def check_run_dir(run_dir: Path, resuming: bool, mode: str = "train") -> None:
    """Refuse a run into ``run_dir`` that would overwrite another run's files or cannot write its own.

    Args:
        run_dir: the run's output dir (it may not exist yet).
        resuming: the run resumes from a checkpoint (``ckpt_path`` is set).
        mode: ``train``, or ``validate``/``predict``, which never share a dir with another run.

    Raises:
        ConfigError: one line naming the folder, what is wrong and what to do.
    """
    where = f"output_dir={str(run_dir)!r}"
    existing = next((p for p in (run_dir, *run_dir.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError([f"{where} cannot be made: {str(existing)!r} is a file, not a folder; {FINISHED_ELSEWHERE}"])
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            [f"{where} is not writable ({str(existing)!r} is read-only for this user); {FINISHED_ELSEWHERE}"]
        )
    status = recorded_status(run_dir)
    if status is not None and (status != "interrupted" or mode != "train"):
        raise ConfigError(
            [
                f"{where} already holds a finished run ({METRICS_FILE} says status {status!r}); {FINISHED_ELSEWHERE}; "
                f"to train it further, start a new dir with ckpt_path={run_dir / 'last.ckpt'}"
            ]
        )
    if resuming:
        return
    checkpoint = has_checkpoint(run_dir)
    if status == "interrupted" and checkpoint:
        raise ConfigError(
            [f"{where} holds an interrupted run; resume it with `{resume_hint(run_dir)}`, or {FINISHED_ELSEWHERE}"]
        )
    if checkpoint:
        raise ConfigError(
            [
                f"{where} holds a run that stopped without a {METRICS_FILE} (killed?) and left checkpoints; resume it "
                f"with `{resume_hint(run_dir)}`, or {FINISHED_ELSEWHERE}"
            ]
        )


def recorded_status(run_dir: Path) -> str | None:
    """The status in ``run_dir/metrics.json``; None without one, ``"unreadable"`` for a broken one."""
    try:
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "unreadable"
    return str(metrics.get("status", "ok")) if isinstance(metrics, dict) else "unreadable"


class RunDirLock:
    """``run_dir/.lock`` with this process's pid and host, for as long as the run (or sweep) lasts.

    Taking it twice in one process is fine (the Hydra callback takes it before :func:`train`
    does). Another live process's lock is refused with one line; a lock whose pid is gone on
    this host is stale (its owner was killed) and taken over.

    Args:
        run_dir: the folder to hold.
        key: the setting that names the folder, for the messages: ``output_dir`` for a run,
            ``hydra.sweep.dir`` for a sweep's root.
    """

    def __init__(self, run_dir: Path, key: str = "output_dir") -> None:
        self.path = run_dir / LOCK_FILE
        self.owner = f"{os.getpid()} {socket.gethostname()}"
        self.key = key
        self.elsewhere = FINISHED_ELSEWHERE if key == "output_dir" else f"choose another {key}"
        self.user = "run" if key == "output_dir" else "sweep or run"
        self._made: list[Path] = []  # folders acquire() made: a run refused afterwards leaves none behind

    def acquire(self) -> bool:
        """Take the lock; True when this call took it, False when this process already held it.

        Raises:
            ConfigError: another live process holds it, or the folder cannot be written.
        """
        self._made = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                [f"{self.key}={str(self.path.parent)!r} cannot be made ({err.strerror}); {self.elsewhere}"]
            ) from None
        for _ in range(3):  # a stale lock removed by someone else in between: try again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder == self.owner:
                    return False
                if holder is not None and not self._stale(holder):
                    pid, _, host = holder.partition(" ")
                    raise ConfigError(
                        [
                            f"{self.key}={str(self.path.parent)!r} is in use by another {self.user} (pid {pid} on "
                            f"{host}, see {self.path}); wait for it, or {self.elsewhere}"
                        ]
                    ) from None
                log.warning("taking over the stale lock %s of a %s that is gone (%s)", self.path, self.user, holder)
                self.path.unlink(missing_ok=True)
                continue
            except OSError as err:
                raise ConfigError(
                    [f"{self.key}={str(self.path.parent)!r} cannot be written ({err.strerror}); {self.elsewhere}"]
                ) from None
            with os.fdopen(fd, "w") as file:
                file.write(self.owner + "\n")
            return True
        raise ConfigError([f"{self.key}={str(self.path.parent)!r}: could not take {self.path}; try again"])

    def release(self) -> None:
        """Remove the lock if this process holds it, and the folders it made if they stayed empty."""
        if self.owner != f"{os.getpid()} {socket.gethostname()}":
            return  # a forked child (its exit handlers included) leaves its parent's lock alone
        if self._holder() == self.owner:
            self.path.unlink(missing_ok=True)
        for folder in self._made:
            try:
                folder.rmdir()
            except OSError:
                break  # the run wrote into it (or something else did): keep it and its parents

    def _holder(self) -> str | None:
        try:
            return self.path.read_text().strip() or None
        except OSError:
            return None

    @staticmethod
    def _stale(holder: str) -> bool:
        pid, _, host = holder.partition(" ")
        if host != socket.gethostname() or not pid.isdigit():
            return False  # another machine's process cannot be looked at from here: assume it runs
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # it exists, as another user
        return False


def is_rank_zero() -> bool:
    """False in the extra processes Lightning starts for DDP, which share rank 0's run dir."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only  # here: a config check needs no Lightning

    return rank_zero_only.rank == 0


class RunDirGuard(Callback):
    """Hydra callback: check the run dir and take its lock before Hydra writes anything into it.

    Hydra calls ``on_run_start`` before it makes the run dir, writes ``.hydra/`` and opens the
    job's log file; a refused run ends there with one line and exit status 2 (SystemExit: Hydra
    turns exceptions in callbacks into warnings). A ``-m`` sweep takes the lock of its sweep dir in
    ``on_multirun_start``, before Hydra's sweeper writes ``multirun.yaml`` there and before any job
    starts, and holds it until the sweep ends: a second sweep into a sweep dir in use, or one that
    already holds a finished job (unless it resumes that sweep in place with ``ckpt_path=last``),
    is refused the same way and writes nothing there.
    """

    def __init__(self) -> None:
        self.sweep_lock: RunDirLock | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            validate(config)  # here, not in train(): by then Hydra has made the run dir, .hydra/ and train.log
        except ConfigError as err:
            if user_wants_tracebacks():
                return  # train() raises it with a traceback, which an exception here would not give
            _refuse(err)
        if not is_rank_zero():
            return  # the extra processes of a DDP run share rank 0's run dir and lock
        run_dir = _run_dir(config)
        try:
            check_run_dir(run_dir, config.ckpt_path is not None or slurm_requeued(), config.mode)
            if config.ckpt_path == "last" and config.mode == "train" and not has_checkpoint(run_dir):
                raise ConfigError(
                    [
                        f"ckpt_path=last found no checkpoint in output_dir={str(run_dir)!r}; point hydra.run.dir "
                        "(or output_dir) at the run to resume, or give ckpt_path=<file>"
                    ]
                )
            RunDirLock(run_dir.absolute()).acquire()
        except ConfigError as err:
            _refuse(err)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if is_rank_zero():
            RunDirLock(_run_dir(config).absolute()).release()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))).absolute()
        lock = RunDirLock(sweep_dir, key="hydra.sweep.dir")
        try:
            lock.acquire()
            # Resumed in place (ckpt_path=last), each job keeps, resumes or starts its run (see cli).
            finished = [] if config.get("ckpt_path") == "last" else sorted(sweep_dir.glob(f"**/{METRICS_FILE}"))
            if finished:
                lock.release()
                raise ConfigError(
                    [
                        f"hydra.sweep.dir={str(sweep_dir)!r} already holds a sweep's results ({finished[0]}); choose "
                        "another hydra.sweep.dir, or resume that sweep in place: its command with "
                        f"hydra.sweep.dir={sweep_dir} ckpt_path=last"
                    ]
                )
        except ConfigError as err:
            _refuse(err)
        self.sweep_lock = lock
        # A sweep ended by a signal or an error never reaches on_multirun_end: release the lock at exit then.
        atexit.register(lock.release)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra calls the end callbacks in reverse order: the sweep's summary is written by now.
        if self.sweep_lock is not None:
            self.sweep_lock.release()
            atexit.unregister(self.sweep_lock.release)
            self.sweep_lock = None


def _run_dir(config: DictConfig) -> Path:
    """Where the run will write: ``output_dir`` when given, else ``hydra.run.dir`` (its default's target)."""
    given = OmegaConf.to_container(config, resolve=False).get("output_dir")  # unresolved: ${...} as written
    if given is not None and "hydra:runtime.output_dir" not in str(given):
        return Path(str(config.output_dir))
    return Path(str(OmegaConf.select(config, "hydra.run.dir")))


def slurm_requeued() -> bool:
    """This is a SLURM job started again by a requeue (Lightning's auto-requeue on SIGUSR1)."""
    return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def _refuse(err: ConfigError) -> None:
    print("\n".join(f"error: {problem}" for problem in err.problems), file=sys.stderr)
    raise SystemExit(2)
