"""Checkpoints that survive: atomic writes, checks before a resume, and a fit that stops cleanly on a signal.

- :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin, ``Trainer(plugins=[...])``) writes
  every checkpoint to a temporary file in the checkpoint's own folder, fsyncs it and renames it
  into place: a kill or a full disk leaves the previous checkpoints intact and never a partial
  file under a final name (Lightning's default goes through fsspec, whose local transaction
  writes in ``$TMPDIR``: a copy, not a rename, when that is another filesystem).
- :func:`read_checkpoint` loads a checkpoint for a resume and turns an empty, truncated or foreign
  file into one line; :func:`newest_checkpoint` finds what ``ckpt_path=last`` resumes.
- :class:`StopOnSignal` (a Lightning callback) routes Ctrl-C into Lightning's own SIGTERM handling,
  so that both signals end the fit after the current update, in a state that resumes bitwise; with
  several processes both signals ask the module instead, whose ranks agree on the update to stop after.

No Hydra here: these work with a plain ``lightning.Trainer``.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from twolayer_lightning.errors import ConfigError, DiskFullError, UnsupportedLightningError
from twolayer_lightning.updates import TESTED_LIGHTNING

log = logging.getLogger(__name__)

# Bumped when a checkpoint of this package changes in a way an older or newer version cannot resume.
CHECKPOINT_FORMAT = 1
STAMP_KEY = "twolayer_lightning"  # the checkpoint's entry {"format": ..., "version": ...}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save each checkpoint to ``.<name>.<pid>.tmp`` beside it, fsync, then rename it into place.

    The rename is atomic on one filesystem, so a reader (or a resume after a kill -9) sees the
    old file or the new one, never a partial one. A full disk raises :class:`DiskFullError`
    naming the path, the bytes needed and the bytes free, after removing the temporary file.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()  # serialised first: its size is what a full disk must be told
        torch.save(checkpoint, buffer)
        data = buffer.getbuffer()
        temp = path.parent / f".{path.name}.{os.getpid()}.tmp"
        try:
            with open(temp, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())  # the bytes are on disk before the name points at them
            os.replace(temp, path)
        except OSError as err:
            temp.unlink(missing_ok=True)
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                free = shutil.disk_usage(path.parent).free
                raise DiskFullError(
                    err.errno,
                    f"no space left on the device to write the checkpoint {path}: it needs {len(data):,} bytes and "
                    f"{free:,} are free; free some space (or keep fewer: trainer.keep_checkpoints=N) and resume "
                    "with ckpt_path=last",
                ) from None
            raise
        _fsync_dir(path.parent)  # the rename itself survives a power cut


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not every OS can open a folder; the rename is atomic all the same
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_checkpoint(path: str | os.PathLike[str], key: str = "ckpt_path") -> dict[str, Any]:
    """Load a checkpoint of this package (tensors mapped, not read) or raise one line saying why not.

    Args:
        path: the ``.ckpt`` file.
        key: the config key the path came from, named in the error.

    Raises:
        ConfigError: the file is empty, truncated, not a torch file, not a Lightning checkpoint
            of :class:`~twolayer_lightning.LitTwoLayerNet`, or from an incompatible version.
    """
    path = Path(path)
    where = f"{key}={str(path)!r}"
    if path.stat().st_size == 0:
        raise ConfigError([f"{where} is an empty file: resume from another checkpoint (ckpt_path=last finds one)"])
    try:
        # mmap: the header and the scalars are read, the tensors only when used.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises RuntimeError, pickle errors, EOFError, ... for a bad file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        reason = reason.split(". ")[0]  # torch's zip reader goes on with advice that is not the user's
        raise ConfigError(
            [
                f"{where} cannot be read as a checkpoint (truncated, or not a torch file: {reason[:200]}); "
                "resume from another checkpoint (ckpt_path=last finds the newest complete one)"
            ]
        ) from None
    missing = [
        k
        for k in ("state_dict", "global_step", "hyper_parameters")
        if not isinstance(checkpoint, dict) or k not in checkpoint
    ]
    if missing:
        raise ConfigError(
            [
                f"{where} is not a Lightning checkpoint of this package (it has no {', '.join(missing)}); give a "
                "last.ckpt or checkpoints/step-N.ckpt written by a run"
            ]
        )
    stamp = checkpoint.get(STAMP_KEY)
    if isinstance(stamp, dict) and stamp.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(
            [
                f"{where} was written by twolayer-lightning {stamp.get('version')} in checkpoint format "
                f"{stamp.get('format')}, and this version reads format {CHECKPOINT_FORMAT}; resume it with "
                f"twolayer-lightning {stamp.get('version')}"
            ]
        )
    hparams = checkpoint["hyper_parameters"]
    if not isinstance(hparams, dict) or not {"in_features", "hidden_features", "out_features", "lr"} <= set(hparams):
        raise ConfigError(
            [f"{where} is a Lightning checkpoint of another model, not of LitTwoLayerNet; give one written by a run"]
        )
    return checkpoint


def newest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint of ``run_dir`` with the most updates that loads: what ``ckpt_path=last`` resumes.

    Candidates are ``last.ckpt``, ``checkpoints/step-N.ckpt`` and Lightning's SLURM
    ``hpc_ckpt_N.ckpt``; one that does not load (cut short by a kill during an older version's
    save, say) is skipped with a warning. Among equal steps the newest file wins.
    """
    run_dir = Path(run_dir)
    candidates = [run_dir / "last.ckpt", *run_dir.glob("checkpoints/step-*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
    best: tuple[int, float, Path] | None = None
    for path in candidates:
        if not path.is_file():
            continue
        try:
            step = int(read_checkpoint(path)["global_step"])
        except ConfigError as err:
            log.warning("skipping %s: %s", path, err.problems[0])
            continue
        key = (step, path.stat().st_mtime, path)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best else None


class StopOnSignal(L.Callback):
    """End a fit after the current update on SIGTERM or SIGINT, through Lightning's own SIGTERM path.

    Lightning's signal connector sets ``trainer.received_sigterm`` on SIGTERM (after forwarding
    it to DDP ranks and, on SLURM with auto-requeue, alongside the SIGUSR1 requeue handler) and
    its loops then raise ``SIGTERMException`` at the end of the training step; the module stops
    its updates within the step as soon as it sees the flag. This callback adds SIGINT (Ctrl-C)
    to that path for the fit, so both signals stop at an update boundary instead of Python's
    KeyboardInterrupt landing in the middle of an update. A second Ctrl-C while that update still
    runs stops the process at once, without saving: one line on stderr and ``SystemExit(130)``. (Once
    the fit has ended, Ctrl-C no longer reaches this handler: Lightning puts the previous one back.)
    With several processes (DDP) and a module that has ``request_stop``
    (:class:`~twolayer_lightning.LitTwoLayerNet`), both signals only ask the module: its ranks agree
    after an update to stop after that one, all of them, and the fit then ends normally with
    :attr:`stopped_together` set (Lightning's own SIGTERM path can leave ranks waiting on each other).
    It also stamps every checkpoint with the package's checkpoint format and version.

    Attributes:
        received: the signal that stopped the fit (``signal.SIGTERM`` or ``signal.SIGINT``), or None.
        stopped_together: with several processes, the signal on which all ranks agreed to stop (the fit
            then ended without ``SIGTERMException``), or None.
    """

    def __init__(self, version: str) -> None:
        self.version = version
        self.received: int | None = None
        self.stopped_together: int | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received = self.stopped_together = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Here, not in on_fit_start: Lightning records every signal's handler after on_fit_start and
        # puts those back when the fit tears down (also after an exception). Set before that record,
        # this handler would be put back and outlive the fit, turning a later Ctrl-C into a no-op.
        if threading.current_thread() is not threading.main_thread():
            return
        if self._agreed_stop(trainer, pl_module):
            # Several processes: Lightning's SIGTERM handler runs a collective (a broadcast) inside the
            # handler, wherever this rank happens to be, and its loops stop each rank on its own flag:
            # the ranks then wait in collectives the others never join. Here both signals only ask the
            # module, whose ranks agree after an update to stop after it (LitTwoLayerNet.request_stop).
            handler = self._make_request_handler(pl_module.request_stop)
            signal.signal(signal.SIGTERM, handler)
            signal.signal(signal.SIGINT, handler)
            return
        _raise_sigterm_flag(trainer, check_only=True)  # a Lightning without the flag fails here, in one line
        signal.signal(signal.SIGINT, self._make_sigint_handler(trainer))

    @staticmethod
    def _agreed_stop(trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """Several processes, and a module whose ranks agree on a stop (:meth:`LitTwoLayerNet.request_stop`)."""
        return trainer.world_size > 1 and callable(getattr(pl_module, "request_stop", None))

    def _make_request_handler(self, request_stop: Any) -> Any:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            if signum == signal.SIGINT and self.received is not None:
                _stop_at_once()  # the second Ctrl-C (or one after SIGTERM)
            log.info(
                "%s: all processes stop after an update they agree on%s",
                "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name,
                " (press Ctrl-C again to stop at once)" if signum == signal.SIGINT else "",
            )
            if self.received is None or signum == signal.SIGTERM:
                self.received = signum
            request_stop(signum)

        return on_signal

    def _make_sigint_handler(self, trainer: L.Trainer) -> Any:
        def on_sigint(signum: int, frame: FrameType | None) -> None:
            if trainer.received_sigterm:
                _stop_at_once()  # the second Ctrl-C while an update still runs
            log.info("Ctrl-C: stopping after the current update (press it again to stop at once)")
            self.received = signal.SIGINT
            _raise_sigterm_flag(trainer)

        return on_sigint

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._agreed_stop(trainer, pl_module):
            self.stopped_together = pl_module.stopped_by  # the same on every rank

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.received_sigterm and self.received is None:
            self.received = signal.SIGTERM

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[STAMP_KEY] = {"format": CHECKPOINT_FORMAT, "version": self.version}


def _raise_sigterm_flag(trainer: L.Trainer, check_only: bool = False) -> None:
    """Set the flag Lightning's own SIGTERM handler sets, so that Ctrl-C takes SIGTERM's path.

    The flag is private (``trainer._signal_connector.received_sigterm``): this is the one place
    that touches it, and :meth:`StopOnSignal.on_train_start` checks it is there before a fit trains.

    Raises:
        UnsupportedLightningError: this Lightning keeps the flag elsewhere.
    """
    connector = getattr(trainer, "_signal_connector", None)
    if not hasattr(connector, "received_sigterm"):
        raise UnsupportedLightningError(
            f"lightning {L.__version__} has no trainer._signal_connector.received_sigterm, which Ctrl-C uses to stop "
            f"after an update; this package is tested with lightning {TESTED_LIGHTNING}.x: pip install "
            f"'lightning~={TESTED_LIGHTNING}.0'"
        )
    if not check_only:
        connector.received_sigterm = True


def _stop_at_once() -> None:
    """A second Ctrl-C during a fit: stop now, without saving, with one line and exit 130.

    SystemExit, not KeyboardInterrupt, which Lightning's fit turns into sys.exit(1) without a word of the signal.
    """
    print(
        "error: interrupted by a second SIGINT: stopped at once, without saving (checkpoints saved before are kept)",
        file=sys.stderr,
    )
    raise SystemExit(128 + signal.SIGINT)
