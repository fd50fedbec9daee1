"""A sweep's jobs that differ only in ``optim.lr`` and ``seed``, trained together as one Lightning fit.

The launcher ``hydra/launcher=stacked`` (``hydra_plugins.twolayer_lightning_stacked``) groups a
sweep's jobs and runs each group in three phases, each member inside its own Hydra job:
:func:`prepare` checks and locks the member's run dir and draws its data and network exactly as
its single run would; :func:`fit_stacked` trains all members of the group in one fit of a
:class:`StackedFit`; :func:`finish` writes the member's run dir as :func:`~twolayer_lightning.train`
would: ``metrics.json`` (with ``launcher: stacked``, ``group_size`` and ``stacked_mode``),
``last.ckpt`` (a plain :class:`LitTwoLayerNet` checkpoint: it resumes and predicts with the usual
commands), the logger's files and ``loss.png``.

Two modes:

- exact (the default): each member's update runs the very kernels its single run runs, on its own
  tensors (the update path its single run takes: ``handwritten`` on a CPU, ``direct`` on a GPU), so
  every member's losses and weights are ``torch.equal`` to its single run's. The gain is the
  per-job cost (composition, Trainer, start-up) paid once per group.
- batched: one program for all members, ``bmm`` over the stacked weights with the seed's
  hand-written gradients: one kernel per operation for the whole group. The sums inside ``bmm``
  run in another order than ``mm``'s, so the numbers are not bitwise those of the single run
  (the tests bound the difference).

A member whose loss turns inf or nan stops updating at that step and records ``status:
diverged``; the others go on as if it had not been there.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from twolayer_lightning import results
from twolayer_lightning.checkpoints import AtomicCheckpointIO, StopOnSignal
from twolayer_lightning.config import has_validation_rows, updates_per_step, validate
from twolayer_lightning.data import FileRegressionData, SyntheticRegressionData
from twolayer_lightning.model import live_rows_per_unit
from twolayer_lightning.module import LitTwoLayerNet
from twolayer_lightning.optim import InPlaceSGD
from twolayer_lightning.rundir import RunDirLock
from twolayer_lightning.training import (
    choose_lr,
    isolated_global_state,
    make_data,
    make_logger,
    new_model,
    output_dir,
    package_version,
    run_until_signal,
)
from twolayer_lightning.updates import BatchedUpdate, CountedUpdate, MemberUpdates, make_update, settle_path

log = logging.getLogger(__name__)

# The keys in which the jobs of one group may differ; everything else must be equal.
MEMBER_KEYS = ("optim.lr", "seed")


def why_alone(cfg: DictConfig) -> str | None:
    """Why a job cannot be a member of a stacked fit (it then runs on its own, as usual), or None."""
    data = cfg.data
    reasons = (
        (cfg.mode != "train", f"mode={cfg.mode}"),
        (cfg.ckpt_path is not None, "it resumes a checkpoint"),
        (
            cfg.trainer.strategy != "auto" or cfg.trainer.devices != 1 or cfg.trainer.num_nodes != 1,
            "it runs on several devices or processes",
        ),
        (data.kind == "files" and data.batch_size is not None, "mini-batches (data.batch_size)"),
        (has_validation_rows(cfg), "validation rows (data.val_fraction or data.folds)"),
        (
            cfg.trainer.update_path in ("lightning", "cuda_graph"),
            f"trainer.update_path={cfg.trainer.update_path}",
        ),
    )
    return next((why for applies, why in reasons if applies), None)


def group_key(cfg: DictConfig) -> str:
    """What the jobs of one group share: the composed config without Hydra's node and :data:`MEMBER_KEYS`."""
    content = OmegaConf.to_container(cfg, resolve=False)
    content.pop("hydra", None)
    for key in MEMBER_KEYS:
        *parents, last = key.split(".")
        node = content
        for parent in parents:
            node = node.get(parent, {})
        node.pop(last, None)
    return repr(content)


@dataclass
class Member:
    """One job of a stacked fit: its config, run dir, data and network, and what the fit made of it."""

    cfg: DictConfig
    out: Path
    lock: RunDirLock
    data: SyntheticRegressionData | FileRegressionData
    model: LitTwoLayerNet
    lr_search: dict[str, Any] | None
    global_step: int = 0  # the updates this member ran (fewer than the group's when it diverged)
    rows: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (step, metrics) for its logger
    lines: list[str] = field(default_factory=list)  # its `step t  loss` lines, for its log file
    records: list[logging.LogRecord] = field(default_factory=list)  # what was logged while it was prepared
    trainer: L.Trainer | None = None  # holds the member for its checkpoints (see _member_trainer)


def prepare(cfg: DictConfig) -> Member:
    """Check and lock the job's run dir, and draw its data and network as its single run would.

    Raises:
        ConfigError, DataError: as :func:`~twolayer_lightning.train` would for this config; nothing
            is left locked then.
    """
    validate(cfg)
    out = output_dir(cfg).absolute()  # resolved now, inside the job (it reads Hydra's job config)
    lock = RunDirLock(out)
    lock.acquire()
    try:
        with isolated_global_state():
            generator = torch.Generator().manual_seed(cfg.seed)
            data = make_data(cfg, generator)
            lr, lr_search = choose_lr(cfg, data, generator, None)
            model = new_model(cfg, data, generator, lr)
        model.take_data(data)
        out.mkdir(parents=True, exist_ok=True)
    except BaseException:
        lock.release()
        raise
    content = OmegaConf.to_container(cfg, resolve=False)
    content.pop("hydra", None)  # a sweep's job config may still hold Hydra's node
    resolved = OmegaConf.create(content)
    resolved.output_dir = str(out)
    return Member(resolved, out, lock, data, model, lr_search)


def member_bytes(member: Member, exact: bool) -> tuple[int, int]:
    """(bytes each member keeps for the whole fit, bytes of the work space of one update): an estimate.

    Kept: weights and data of its own, twice in batched mode (the stacked copies). The work space
    (activations, gradients) is one member's in exact mode, where members update one after the
    other, and every member's in batched mode.
    """
    n, d_in = member.data.x.shape
    h, d_out = member.model.hparams.hidden_features, member.data.y.shape[1]
    size = 8 if str(member.cfg.trainer.precision).startswith("64") else 4
    kept = size * (d_in * h + h * d_out + n * d_in + n * d_out) * (1 if exact else 2)
    work = size * (d_in * h + h * d_out + 3 * n * h + 3 * n * d_out)
    return kept, work


def chunks(members: Sequence[Member], exact: bool, free_bytes: int, fraction: float) -> list[list[Member]]:
    """The members split into fits that each need at most ``fraction`` of ``free_bytes`` (one member at least)."""
    kept, work = member_bytes(members[0], exact)
    budget = fraction * free_bytes
    per_member = kept + (0 if exact else work)
    size = max(1, int((budget - (work if exact else 0)) // per_member)) if per_member else len(members)
    if size < len(members):
        log.info(
            "stacked: a group of %d jobs needs about %.2f GiB (weights, data and gradients), more than %.0f%% of the "
            "%.2f GiB free: it is trained as %d fits of at most %d",
            len(members),
            (len(members) * per_member + (work if exact else 0)) / 2**30,
            100 * fraction,
            free_bytes / 2**30,
            math.ceil(len(members) / size),
            size,
        )
    return [list(members[i : i + size]) for i in range(0, len(members), size)]


def free_memory(accelerator: str) -> int:
    """Free bytes of the device a fit with ``accelerator`` would use: the GPU's, else the machine's available RAM."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0]
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**62  # unknown: do not split


class _StackedData(L.LightningDataModule):
    """Every member's full batch, the same tensors every step (moved to the device once)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.batches = batches

    def train_dataloader(self) -> itertools.repeat:
        device = self.trainer.strategy.root_device
        return itertools.repeat(tuple((x.to(device), y.to(device)) for x, y in self.batches))


class StackedFit(L.LightningModule):
    """The members' networks, trained together: every training step runs each live member's updates.

    ``global_step`` counts updates as in a single run (every member takes the same ones), and the
    steps, reports and divergence checks happen where a single run of the members' config has
    them, so that each member's logged rows and checkpoint are those of its single run.

    The update objects are built when the fit starts (:mod:`twolayer_lightning.updates`): in exact
    mode each member's own, the one its single run takes (:func:`~twolayer_lightning.updates.settle_path`);
    in batched mode one :class:`~twolayer_lightning.updates.BatchedUpdate` for all. Each update of
    the group is counted once in ``global_step`` (:class:`~twolayer_lightning.updates.CountedUpdate`).

    Args:
        members: the members' networks, each built as its single run builds it.
        exact: per-member updates (bitwise those of the single runs) or one batched program.
        updates_per_step: seed updates per training step, as the single runs have them.
    """

    def __init__(self, members: Sequence[LitTwoLayerNet], exact: bool, updates_per_step: int) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.members = torch.nn.ModuleList(members)
        self.exact = exact
        self.updates_per_step = updates_per_step
        self.steps = [0] * len(members)  # updates each member has run
        self.live = list(range(len(members)))  # members still updating
        self._pending: list[tuple[tuple[int, ...], torch.Tensor]] = []  # (members, their losses) per update
        self._group: MemberUpdates | BatchedUpdate | None = None  # every member's update; made in on_train_start
        self._update: CountedUpdate | None = None  # _group's update, counted in global_step
        self.rows: list[list[tuple[int, dict[str, float]]]] = [[] for _ in members]  # each member's logger rows
        self.lines: list[list[str]] = [[] for _ in members]  # each member's `step t  loss` lines

    def configure_optimizers(self) -> InPlaceSGD:
        # One group per member, with its lr: what Lightning counts steps on (the updates themselves
        # run below, per member or batched).
        return InPlaceSGD([{"params": list(m.net.named_parameters()), "lr": m.hparams.lr} for m in self.members])

    def on_train_start(self) -> None:
        optimizer = self.optimizers()
        CountedUpdate.require(optimizer)  # before settling paths: a stacked fit has no "lightning" path to take
        if self.exact:
            paths = [self._member_path(m) for m in self.members]
            self._group = MemberUpdates(
                make_update(path, m.net, InPlaceSGD(m.net.named_parameters(), lr=m.hparams.lr))
                for path, m in zip(paths, self.members, strict=True)
            )
        else:
            paths = [BatchedUpdate.path] * len(self.members)
            self._group = BatchedUpdate([m.net for m in self.members], [m.hparams.lr for m in self.members])
        self._update = CountedUpdate(self._group, optimizer, self.trainer)
        for member, path in zip(self.members, paths, strict=True):
            member.begin_fit(path)

    def _member_path(self, member: LitTwoLayerNet) -> str:
        """The update path the member's single run takes: handwritten or direct (others run alone, see why_alone)."""
        asked = member.hparams.update_path
        path = settle_path(asked, self.device.type, self.trainer.world_size, self.optimizers)
        if path not in ("handwritten", "direct"):
            raise ValueError(
                f"StackedFit: update_path={asked!r} takes the {path!r} path here, which a stacked fit does not run; "
                "run this job on its own (stacked.why_alone sends it there)"
            )
        return path

    def training_step(self, batch: tuple[tuple[torch.Tensor, torch.Tensor], ...], batch_idx: int) -> None:
        start = self.global_step
        updates = min(self.updates_per_step, self.trainer.max_steps - start)
        check_each = self.device.type == "cpu"  # as a single run: every loss on a CPU, each interval elsewhere
        update = self._update
        stopping = False
        for _ in range(updates):
            members, losses = update(batch, self.live)  # every live member's update, one step of global_step
            self._pending.append((members, losses))
            for k in self.live:
                self.steps[k] += 1
            if check_each:
                for k, value in zip(members, losses.tolist(), strict=True):
                    if not math.isfinite(value) and k in self.live:
                        self.live.remove(k)  # it stops here; the report records where
            if not self.live:
                break
            if self.trainer.received_sigterm:
                stopping = True  # SIGTERM or Ctrl-C: stop after this update (Lightning ends the fit after the step)
                break
        every = self.trainer.log_every_n_steps
        crossed = every > 0 and self.global_step // every > start // every
        if crossed or stopping or not self.live or self.global_step >= self.trainer.max_steps:
            self._report(batch)
        if not self.live:
            self.trainer.should_stop = True

    def on_train_end(self) -> None:
        self._group.finish()  # batched: the trained weights back into the members' networks

    def sync_weights(self) -> None:
        """Make every member's network hold its weights as trained so far (batched mode trains stacked copies)."""
        if isinstance(self._group, BatchedUpdate):
            self._group.copy_back()

    def _report(self, batch: tuple[tuple[torch.Tensor, torch.Tensor], ...]) -> None:
        """Bring the pending losses to the host (one sync), give each member its rows and stop diverged ones."""
        if not self._pending:
            return
        values = torch.cat([losses for _, losses in self._pending]).cpu().tolist()
        first_t = self.global_step - len(self._pending)
        fresh: dict[int, list[tuple[int, float]]] = {}  # member -> its (step, loss) of this interval
        position = 0
        for i, (members, losses) in enumerate(self._pending):
            for k, value in zip(members, values[position : position + len(losses)], strict=True):
                member = self.members[k]
                if member.diverged_at is None:
                    fresh.setdefault(k, []).append((first_t + i, value))
                    member.losses.append(value)
                    if not math.isfinite(value):
                        member.diverged_at = first_t + i
            position += len(losses)
        self._pending = []
        for k, rows in fresh.items():
            member = self.members[k]
            if member.diverged_at is not None and k in self.live:
                self.live.remove(k)  # found here (not on a CPU): it stops at this interval's end, as a single run
            extra = {}
            if member.diverged_at is None:
                extra = member.batch_metrics(batch[k][1], self._group.predictions[k])
            self.rows[k].extend(
                (t, {"train_loss": value, **(extra if j == len(rows) - 1 else {})}) for j, (t, value) in enumerate(rows)
            )
            self.lines[k].append(f"step {rows[-1][0]}  loss {rows[-1][1]!r}")
        finite = [v for v in (self.members[k].last_loss for k in fresh) if math.isfinite(v)]
        log.info(
            "step %d  %d of %d members training%s",
            self.global_step - 1,
            len(self.live),
            len(self.members),
            f", loss {min(finite):.4g} to {max(finite):.4g}" if finite else "",
        )


@dataclass
class StackedResult:
    """What a stacked fit leaves for :func:`finish`."""

    loops: dict[str, Any]  # the fit's loop state (Trainer.fit_loop.state_dict()): each member's checkpoint has it
    interrupted: int | None  # the signal that stopped the fit, or None
    seconds: float  # the whole fit's wall time
    global_step: int  # the updates of the fit (a member that diverged ran fewer)


def fit_stacked(members: Sequence[Member], exact: bool) -> StackedResult:
    """Train ``members`` (one group: their configs differ only in :data:`MEMBER_KEYS`) in one fit.

    Each member's network, losses, steps, rows and lines are filled in.
    """
    cfg = members[0].cfg
    module = StackedFit([m.model for m in members], exact, updates_per_step(cfg))
    batches = [
        m.data.training_rows if isinstance(m.data, FileRegressionData) else (m.data.x, m.data.y) for m in members
    ]
    stopper = StopOnSignal(package_version())
    callbacks: list[L.Callback] = [stopper]
    if cfg.trainer.checkpoint_every_n_steps:
        for member in members:
            member.trainer = _member_trainer(member)
        callbacks.append(MemberCheckpoints(members, cfg.trainer.checkpoint_every_n_steps, cfg.trainer.keep_checkpoints))
    with isolated_global_state():
        trainer = L.Trainer(
            accelerator=cfg.trainer.accelerator,
            devices=1,
            precision=cfg.trainer.precision,
            max_steps=cfg.trainer.max_steps,
            log_every_n_steps=cfg.trainer.log_every_n_steps,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            callbacks=callbacks,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=members[0].out,
        )
        started = time.perf_counter()
        interrupted = run_until_signal(stopper, lambda: trainer.fit(module, datamodule=_StackedData(batches)))
        seconds = time.perf_counter() - started
    for k, member in enumerate(members):
        member.global_step, member.rows, member.lines = module.steps[k], module.rows[k], module.lines[k]
        if member.model.diverged_at is None and interrupted is None:  # as a single run: at the end of a whole fit
            x = batches[k][0].to(member.model.device)
            member.model.dead_units = (live_rows_per_unit(x, member.model.net.w1) == 0).float().mean().item()
    return StackedResult(trainer.fit_loop.state_dict(), interrupted, seconds, trainer.global_step)


def finish(member: Member, group_size: int, exact: bool, fit: StackedResult) -> dict[str, Any]:
    """Write ``member``'s run dir as its single run would (:func:`results.finish`), log its lines, release its lock.

    Returns:
        The member's metrics, as its single run returns them.

    Raises:
        As :func:`results.finish`: the member diverged, was interrupted, or the disk filled up.
    """
    model = member.model
    try:
        for record in member.records:  # logged while it was prepared, before its job's log file was open
            logging.getLogger(record.name).handle(record)
        for line in member.lines:
            log.info("%s", line)
        trainer = member.trainer or _member_trainer(member)
        trainer.fit_loop.load_state_dict(fit.loops)
        if trainer.logger is not None:
            for step, row in member.rows:
                trainer.logger.log_metrics(row, step=step)
            if not math.isnan(model.dead_units):
                trainer.logger.log_metrics({"dead_units": model.dead_units}, step=member.global_step - 1)
            trainer.logger.save()
        if model.diverged_at is None and not fit.interrupted:
            model.warn_if_stalled(unscaled_data=getattr(member.data, "standardize", None) is False)
        end = results.RunEnd(
            member.cfg,
            member.out,
            model,
            member.data,
            trainer,
            fit.seconds,
            fit.interrupted,
            member.lr_search,
            extra={"launcher": "stacked", "group_size": group_size, "stacked_mode": "exact" if exact else "batched"},
            fit_name=f"a stacked fit of {group_size}",
            global_step=member.global_step,
        )
        return results.finish(end)
    except OSError as err:
        raise results.disk_full(err, member.out) from err
    finally:
        member.lock.release()


class MemberCheckpoints(L.Callback):
    """Every ``every`` updates, ``checkpoints/step-N.ckpt`` of each member still training, as its single run's
    ``ModelCheckpoint`` writes them at that update (the newest ``keep`` kept; 0 keeps all).

    Each is written through the member's own Trainer (:func:`_member_trainer`) with the stacked
    fit's loop state at that moment, so it resumes as its single run's would: a sweep killed in
    any way loses only the updates since the last of them.
    """

    def __init__(self, members: Sequence[Member], every: int, keep: int) -> None:
        self.members, self.every, self.keep = list(members), every, keep

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step % self.every:
            return
        pl_module.sync_weights()
        loops = trainer.fit_loop.state_dict()
        for k, member in enumerate(self.members):
            if k not in pl_module.live or member.model.diverged_at is not None:
                continue  # as a single run: nothing is saved after its loss turned inf or nan
            member.trainer.fit_loop.load_state_dict(loops)
            folder = member.out / "checkpoints"
            member.trainer.save_checkpoint(folder / f"step-{step}.ckpt", weights_only=False)
            self._keep_newest(folder)

    def _keep_newest(self, folder: Path) -> None:
        if not self.keep:
            return
        saved = sorted(folder.glob("step-*.ckpt"), key=lambda path: int(path.stem.removeprefix("step-")))
        for path in saved[: -self.keep]:
            path.unlink(missing_ok=True)


class _ZeroStepsNote(logging.Filter):
    """Lightning's note that a fit of ``max_steps=0`` stopped: true, and nothing a member's log should say."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`max_steps=0` reached" not in record.getMessage()


def _member_trainer(member: Member) -> L.Trainer:
    """A Trainer that holds ``member`` as its single run's Trainer does at the end of its fit.

    A fit of no updates attaches the member's network, data module and optimizer (and logs its
    hyperparameters); the stacked fit's loop state then makes its step counts the member's. Its
    ``save_checkpoint`` writes what the single run's writes, through Lightning's own code.
    """
    cfg = member.cfg
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        max_steps=0,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=make_logger(cfg.logger, member.out),
        callbacks=[StopOnSignal(package_version())],  # stamps the checkpoint, as in a single run
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=member.out,
    )
    quiet = _ZeroStepsNote()
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero_log.addFilter(quiet)
    try:
        with isolated_global_state():
            trainer.fit(member.model, datamodule=member.data)
    finally:
        rank_zero_log.removeFilter(quiet)
    return trainer
