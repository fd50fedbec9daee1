"""The LightningModule: the seed's autograd loop under manual optimization (no Hydra)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torchmetrics import ExplainedVariance, MeanSquaredError, MetricCollection, R2Score, SumMetric

from twolayer_lightning.model import Activation, Init, TwoLayerNet, live_rows_per_unit, sum_squared_error
from twolayer_lightning.optim import InPlaceSGD
from twolayer_lightning.updates import UPDATE_PATHS, UpdatePath, make_fit_update, settle_path

log = logging.getLogger(__name__)


class LitTwoLayerNet(L.LightningModule):
    """The seed's training loop, step for step, inside Lightning.

    Each update is the seed's: forward ``x.mm(w1).clamp(min=0).mm(w2)``, loss
    ``(y_pred - y).pow(2).sum()``, backward, then :class:`InPlaceSGD`'s
    ``w -= lr * w.grad; w.grad.zero_()``. Lightning counts every update, whichever path runs it:
    ``trainer.global_step`` is the number of updates and ``max_steps`` stops exactly.

    ``update_path`` says how an update runs; every path gives the same weights, bit for bit:

    - ``"handwritten"``: the seed's section 二, gradients written out by hand
      (``grad_y_pred = 2 * (y_pred - y)``, ``grad_w2 = h_relu.t().mm(grad_y_pred)``,
      ``grad_h = grad_y_pred.mm(w2.t())`` zeroed where ``h < 0``, ``grad_w1 = x.t().mm(grad_h)``)
      and the in-place update with the optimizer's lr. They are the very operations autograd runs
      for this net, in the same order, so the weights are bitwise those of the autograd loop,
      without building a graph or zeroing ``.grad`` (``.grad`` stays unset). Counted in
      ``global_step`` like ``"direct"``.
    - ``"direct"``: one plain function per update (forward, ``loss.backward()``,
      :meth:`InPlaceSGD.update`), counted in ``global_step`` by the same two calls that
      ``LightningOptimizer.step`` makes around an optimizer step. It skips Lightning's per-update
      wrappers and hooks (``on_before_backward``, ``on_after_backward``,
      ``on_before_optimizer_step``, a ``backward`` override, optimizer step hooks), which at the
      seed's size cost about a fifth of the update itself.
    - ``"lightning"``: ``manual_backward(loss)`` and ``optimizer.step()``, the textbook manual
      optimization; every hook above runs. For callbacks that need them, and what DDP's gradient
      sync needs: with several processes every path but ``"cuda_graph"`` takes this one.
    - ``"cuda_graph"``: the direct update captured once as a CUDA graph and replayed (one GPU
      process; every training step must bring the same batch tensors, as the full batch does).
      Kernel launches and Python leave the loop.
    - ``"auto"`` (the default): ``"handwritten"`` on a CPU, where the parity tests prove it
      bitwise, ``"direct"`` on a GPU, where they have not run yet.

    Each path is one small update object (given x and y: one update, return the loss and the
    predictions), chosen once when the fit starts (see :mod:`twolayer_lightning.updates`).

    The loss of every step is kept on the device and looked at every ``log_every_n_steps``
    steps of the Trainer (one device sync per interval, not per step): each step's loss goes to
    the logger, the last one to the console, and a loss that is inf or nan stops training and
    is recorded with the step where it first appeared (:attr:`diverged_at`). With several processes
    (DDP) the ranks sum their losses after every update instead, so that all of them stop after the
    same one: at a loss that is inf or nan, or at a stop asked for by :meth:`request_stop` on any rank
    (a signal; :attr:`stopped_by` then names it).

    Args:
        in_features: D_in, the number of input features.
        hidden_features: H, the number of hidden ReLU units.
        out_features: D_out, the number of outputs.
        lr: the learning rate of the in-place SGD update (the seed's 1e-6).
        activation: ``"clamp"`` or ``"function"`` (the custom autograd Function), see
            :class:`~twolayer_lightning.model.TwoLayerNet`.
        generator: draws ``w1`` then ``w2``; pass the one that drew the data to follow the seed.
        updates_per_step: how many of the seed's updates one training step runs on its batch.
            1 is the plain mapping (one batch, one update); more amortise Lightning's per-batch
            cost when every batch is the same full batch. Every update is counted, so
            ``global_step`` counts updates, and the last training step runs only as many as
            ``max_steps`` leaves.
        update_path: ``"auto"``, ``"handwritten"``, ``"direct"``, ``"lightning"`` or ``"cuda_graph"``,
            see above.
        init: ``"seed"`` (randn, the seed's) or ``"scaled"`` (randn / sqrt(fan_in)), see
            :class:`~twolayer_lightning.model.TwoLayerNet`.

    Units: with a data module that standardizes (``FileRegressionData(standardize=True)``), the
    network takes the data module's statistics when the fit starts (:meth:`setup`) and keeps them
    in its buffers, so that they travel in checkpoints. Training steps then run the seed's update on
    the standardized rows, and ``train_loss`` (every step's) is that objective: the sum of squares
    in standardized units. Everything else is in the data's units: :meth:`forward`, predictions,
    validation metrics (``val_loss`` included), and the train MSE, R2 and explained variance logged
    at each report.

    Example:
        >>> from twolayer_lightning import SyntheticRegressionData
        >>> gen = torch.Generator().manual_seed(0)
        >>> data = SyntheticRegressionData(64, 1000, 10, generator=gen)
        >>> model = LitTwoLayerNet(1000, 100, 10, lr=1e-6, generator=gen)
        >>> trainer = L.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(model, datamodule=data)
        >>> trainer.global_step, len(model.losses)
        (5, 5)
    """

    def __init__(
        self,
        in_features: int = 1000,
        hidden_features: int = 100,
        out_features: int = 10,
        lr: float = 1e-6,
        activation: Activation = "clamp",
        generator: torch.Generator | None = None,
        updates_per_step: int = 1,
        update_path: UpdatePath = "auto",
        init: Init = "seed",
    ) -> None:
        super().__init__()
        if isinstance(updates_per_step, bool) or not isinstance(updates_per_step, int) or updates_per_step <= 0:
            raise ValueError(
                f"LitTwoLayerNet: updates_per_step={updates_per_step!r} is not allowed; use an integer >= 1"
            )
        if update_path not in UPDATE_PATHS:
            raise ValueError(
                f"LitTwoLayerNet: update_path={update_path!r} is not allowed; use one of {', '.join(UPDATE_PATHS)}"
            )
        # Only scalars: the checkpoint then loads with weights_only=True.
        self.save_hyperparameters(ignore=["generator"])
        self.automatic_optimization = False
        self.net = TwoLayerNet(
            in_features, hidden_features, out_features, activation=activation, generator=generator, init=init
        )
        # The CSV column names of x and y the net was trained on ({"x": [...], "y": [...]}), when known;
        # saved in checkpoints, so that predictions on a new CSV can pick its columns and name theirs.
        self.column_names: dict[str, list[str]] | None = None
        self.losses: list[float] = []  # every step's loss of the current fit, in step order
        self._first_step = 0  # global_step when the current fit started (> 0 for a resume)
        self.diverged_at: int | None = None  # the first step (the seed's t) whose loss was inf or nan
        self.dead_units: float = math.nan  # share of hidden units dead at the end of the last fit, 0..1
        self._pending: list[torch.Tensor] = []  # losses not yet brought to the host
        # With several processes: a signal this rank received (set by request_stop), and the one all
        # ranks agreed to stop on (see training_step); one process stops through Lightning's flag instead.
        self.stop_requested: int | None = None
        self.stopped_by: int | None = None
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (x, y, y_pred) of the last update
        self._path: str = update_path  # the path this fit takes, settled in on_train_start
        # Runs one update of that path (twolayer_lightning.updates); made in on_train_start.
        self._update: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
        # One metric object per stage. Train metrics are taken at each report on the batch just
        # used (the whole training set when training is full batch), so steps between reports
        # cost nothing; validation metrics cover the whole validation set.
        self.train_metrics = _regression_metrics(prefix="train_")
        self.val_metrics = _regression_metrics(prefix="val_")
        # The seed's loss, a sum of squares, over the whole validation set (val_mse is its mean). A float
        # nan_strategy replaces a nan by that float: nan itself, so a diverged model's loss stays nan.
        self.val_loss = SumMetric(nan_strategy=math.nan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def setup(self, stage: str) -> None:
        """Take the data module's standardization statistics and column names when a fit starts."""
        if stage == "fit" and self.trainer is not None:
            self.take_data(self.trainer.datamodule)

    def take_data(self, datamodule: Any) -> None:
        """Take ``datamodule``'s standardization statistics (``scaling``) and column names, as a fit does.

        Raises:
            ValueError: this network already standardizes with other statistics.
        """
        scaling = getattr(datamodule, "scaling", None)
        if scaling is not None and not self.net.scaled:
            self.net.set_scaling(*scaling)
        elif self.net.scaled and (
            scaling is None
            or not all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(self._scaling(), scaling, strict=True))
        ):
            raise ValueError(
                "LitTwoLayerNet: this network standardizes with statistics of other training rows than the data "
                "module gives; fit it on the data it was trained on (FileRegressionData with the same rows and "
                "standardize=True), or start from a new LitTwoLayerNet"
            )
        x_names, y_names = getattr(datamodule, "x_names", None), getattr(datamodule, "y_names", None)
        if self.column_names is None and x_names is not None and y_names is not None:
            self.column_names = {"x": list(x_names), "y": list(y_names)}

    def _scaling(self) -> tuple[torch.Tensor, ...]:
        return (self.net.x_mean, self.net.x_scale, self.net.y_mean, self.net.y_scale)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.column_names is not None:
            checkpoint["column_names"] = self.column_names  # lists of str: loads with weights_only=True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.column_names = checkpoint.get("column_names")

    def configure_optimizers(self) -> InPlaceSGD:
        return InPlaceSGD(self.net.named_parameters(), lr=self.hparams.lr)

    def on_fit_start(self) -> None:
        # Before the signal handlers that may request a stop are set (StopOnSignal, in on_train_start).
        self.stop_requested = self.stopped_by = None

    def on_train_start(self) -> None:
        self.begin_fit(self._settle_path())
        optimizer = self.optimizers()
        # A resume restores the optimizer's state, lr included: the lr this module was built with
        # is the one the remaining updates use (and the one a run records).
        for group in optimizer.optimizer.param_groups:
            group["lr"] = self.hparams.lr
        self._update = make_fit_update(self._path, self.net, optimizer, self.trainer, self.manual_backward)

    def begin_fit(self, update_path: str) -> None:
        """Start a fit: forget the last fit's losses and divergence, and record the update path it takes.

        :meth:`on_train_start` calls it; so does a fit that runs this network's updates itself (the
        stacked fit), before its first update.
        """
        self._first_step = self.global_step  # 0 for a fresh fit; a resume starts where its checkpoint ended
        self.losses = []
        self.diverged_at = None
        self._pending = []
        self._path = update_path

    def _settle_path(self) -> str:
        """The update path this fit takes (:func:`~twolayer_lightning.updates.settle_path`)."""
        return settle_path(self.hparams.update_path, self.device.type, self.trainer.world_size, self.optimizers)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        start = self.global_step
        updates = self.hparams.updates_per_step
        if self.trainer.max_steps > 0:
            updates = min(updates, self.trainer.max_steps - start)
        # One CPU process can look at every loss for free and stop at the very step it turns inf or
        # nan; on a GPU that would be a sync per step, so it looks at each interval's losses together.
        # DDP ranks agree on every update (see _agree): they must stop after the same one.
        world_size = self.trainer.world_size
        check_each = world_size == 1 and x.device.type == "cpu"
        diverged = stopping = False
        # Looked up once: at the seed's size each update's own Python is a few percent of it.
        update, pending, trainer = self._update, self._pending, self.trainer
        for _ in range(updates):
            loss, y_pred = update(x, y)  # one seed update, counted in global_step
            if world_size > 1:
                loss, diverged, stopping = self._agree(loss)
                pending.append(loss)
                if diverged or stopping:
                    break
                continue
            pending.append(loss)
            if check_each and not math.isfinite(loss.item()):
                diverged = True
                break
            if trainer.received_sigterm:
                # SIGTERM (or Ctrl-C, see checkpoints.StopOnSignal): stop after this update, not after the
                # step's remaining ones; Lightning's loop then ends the fit at the end of this step.
                stopping = True
                break
        self._last = (x, y, y_pred)
        every = self.trainer.log_every_n_steps  # 0 in Trainer(barebones=True): report at the end only
        crossed = every > 0 and self.global_step // every > start // every
        if crossed or diverged or stopping or self.global_step >= self.trainer.max_steps:
            self._report()
            if not self.trainer.barebones:  # barebones forbids self.log
                # For callbacks (checkpoint monitors) and the progress bar; the logger got every step.
                self.log("train_loss", self.last_loss, logger=False, prog_bar=True)
        return loss

    def _agree(self, loss: torch.Tensor) -> tuple[torch.Tensor, bool, bool]:
        """DDP, after each update: the full batch's loss, and whether to stop, the same on every rank.

        One all-reduce sums this rank's loss (the full batch's) and whether it was asked to stop
        (:meth:`request_stop`); when any rank was, a second one takes the largest signal number
        asked for (SIGTERM over SIGINT). Every rank gets
        the same numbers after the same update, so all stop after it, for a signal to any of them or
        for a loss that is inf or nan: none waits in a collective that another never joins.
        ``trainer.should_stop`` then ends the fit at the end of this step on every rank.
        """
        asked = self.stop_requested or 0
        reduce = self.trainer.strategy.reduce  # an all-reduce, in place
        total = reduce(torch.stack([loss.detach().reshape(()), loss.new_tensor(float(asked > 0))]), reduce_op="sum")
        full_loss, anyone_asked = total.tolist()  # one sync per update (Lightning's loop makes one too)
        signum = 0
        if anyone_asked:  # the same on every rank, and so is this second all-reduce: the signal's number
            signum = int(reduce(loss.new_tensor([float(asked)]), reduce_op="max").item())
        diverged = not math.isfinite(full_loss)
        if signum and not diverged:
            self.stopped_by = signum
            self.trainer.should_stop = True
        return total[0], diverged, self.stopped_by is not None

    def request_stop(self, signum: int) -> None:
        """Ask a fit over several processes to stop after the current update, on signal ``signum``.

        Safe in a signal handler: it only records the request. The ranks agree on it after the
        next update (:meth:`_agree`) and all stop there; :attr:`stopped_by` then holds the signal.
        """
        self.stop_requested = max(self.stop_requested or 0, int(signum))

    def on_train_end(self) -> None:
        self._update = None  # a later fit starts afresh (a CUDA graph would hold this fit's batch tensors)
        self._report()
        if self.diverged_at is None and self._last is not None:
            self._measure_dead_units()
            if self.stopped_by is None:  # an interrupted run's tail says nothing about its lr
                self._warn_if_stalled()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        y_pred = self(x)
        self.val_metrics.update(y_pred, y)
        self.val_loss.update(sum_squared_error(y_pred, y))

    def on_validation_epoch_end(self) -> None:
        values = {name: value.item() for name, value in self.val_metrics.compute().items()}
        values["val_loss"] = self.val_loss.compute().item()  # all ranks' rows when there are several processes
        self.val_metrics.reset()
        self.val_loss.reset()
        if self.trainer.sanity_checking:
            return
        if self.logger is not None:
            self.logger.log_metrics(values, step=self.global_step)
        self.log_dict(values, logger=False)  # for checkpoint monitors (best by val_loss)
        if self.trainer.is_global_zero:
            # During fit, after the update of step t = global_step - 1; alone (trainer.validate), the checkpoint's.
            when = f"step {self.global_step - 1}" if self.trainer.state.fn == "fit" else "validate"
            log.info("%s  val_loss %r  val_r2 %.4f", when, values["val_loss"], values["val_r2"])

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x)

    @property
    def update_path_taken(self) -> str:
        """The update path the last fit took: ``update_path``, or ``"lightning"`` where it had to (DDP).

        ``"batched"`` after a stacked fit in batched mode, which trained this network with others at once.
        """
        return self._path

    @property
    def last_loss(self) -> float:
        """The loss computed in the last step so far: the last number the seed prints (nan before any)."""
        return self.losses[-1] if self.losses else math.nan

    def _report(self) -> None:
        """Bring the pending losses to the host, log them, and stop at the first inf or nan."""
        if not self._pending:
            return
        # With several processes each loss is already the full batch's, summed over ranks by _agree.
        pending = torch.stack(self._pending).cpu().tolist()  # the one sync of the interval
        self._pending = []
        first_t = self.global_step - len(pending)  # the seed's t of pending[0]
        bad = next((i for i, value in enumerate(pending) if not math.isfinite(value)), None)
        if bad is not None:
            pending = pending[: bad + 1]
            self.diverged_at = first_t + bad
            self.trainer.should_stop = True
        self.losses.extend(pending)
        t = first_t + len(pending) - 1
        # The metrics of the last update's batch share the row of its loss in the logger.
        extra = self._train_metrics() if bad is None and self.logger is not None else {}  # they only go there
        if self.logger is not None:
            for i, value in enumerate(pending):
                self.logger.log_metrics(
                    {"train_loss": value, **(extra if i == len(pending) - 1 else {})}, step=first_t + i
                )
        if self.trainer.is_global_zero:
            log.info("step %d  loss %r", t, pending[-1])

    def _train_metrics(self) -> dict[str, float]:
        """Metrics of the last update's batch, from the predictions it already made, in the data's units."""
        if self._last is None:
            return {}
        _, y, y_pred = self._last
        return self.batch_metrics(y, y_pred)

    @torch.no_grad()
    def batch_metrics(self, y: torch.Tensor, y_pred: torch.Tensor) -> dict[str, float]:
        """The train metrics a report logs (``train_mse``, ``train_r2``, ``train_explained_variance``).

        Of the predictions ``y_pred`` for the targets ``y`` of one training batch, both as the
        training step sees them (standardized when the net scales), in the data's units. A batch
        of one row has no R2 or explained variance (they need two rows): only its MSE then.
        """
        y, y_pred = self.net.unstandardize_y(y), self.net.unstandardize_y(y_pred)
        if len(y) < 2:
            return {"train_mse": (y_pred - y).pow(2).mean().item()}
        self.train_metrics.update(y_pred, y)
        values = {name: value.item() for name, value in self.train_metrics.compute().items()}
        self.train_metrics.reset()
        return values

    @torch.no_grad()
    def _measure_dead_units(self) -> None:
        """The share of hidden units that are dead at the end (see :func:`dead_unit_share`), of every rank's rows."""
        live_rows = live_rows_per_unit(self._last[0], self.net.w1)
        if self.trainer.world_size > 1:
            live_rows = self.trainer.strategy.reduce(live_rows, reduce_op="sum")
        self.dead_units = (live_rows == 0).float().mean().item()
        if self.logger is not None:
            self.logger.log_metrics({"dead_units": self.dead_units}, step=self.global_step - 1)

    def _warn_if_stalled(self) -> None:
        if self.trainer.is_global_zero:
            self.warn_if_stalled(unscaled_data=getattr(self.trainer.datamodule, "standardize", None) is False)

    def warn_if_stalled(self, unscaled_data: bool) -> None:
        """Warn when training did not work though nothing failed, naming the likely cause.

        The cases: the loss hardly moved over the whole run on data that is not standardized
        (``unscaled_data``, and the net does not scale either: scale it); it stopped moving with most
        hidden units dead (lr too large); it fell by less than 5% over the run (lr too small); it rose
        (lr too large). The ends of the run (:attr:`losses`) are compared as means over a tenth of its
        steps each. The whole-run comparisons are made for a fit from step 0 only: a resume sees only
        the tail of its run, which may rightly move little.
        """
        window = max(len(self.losses) // 10, 1)
        if self.diverged_at is not None or len(self.losses) < 2 * window:
            return
        # Means over a window at each end: a mini-batch's loss jumps from batch to batch.
        first = sum(self.losses[:window]) / window
        last = sum(self.losses[-window:]) / window
        fell = (first - last) / abs(first) if first else 0.0
        if self._first_step > 0:
            fell = math.nan  # a resumed fit: no verdict on the whole run from its tail
        unscaled = unscaled_data and not self.net.scaled
        if fell < 0.05 and unscaled:
            log.warning(
                "training hardly moved: the loss fell by %.1f%% over %d steps (now %r) on data that is not "
                "standardized; with the seed's net (no bias, a summed loss) that is the usual cause: try "
                "data.standardize=true",
                100 * fell,
                len(self.losses),
                self.losses[-1],
            )
            return
        if not self.dead_units > 0.5:  # with most units dead, the stall check below names the likelier cause
            if 0 <= fell < 0.05:
                log.warning(
                    "training hardly moved: the loss fell by %.1f%% over %d steps (now %r); lr=%g is likely too "
                    "small: try a larger optim.lr (optim.lr=auto picks one for your data)",
                    100 * fell,
                    len(self.losses),
                    self.losses[-1],
                    self.hparams.lr,
                )
            elif fell < 0:
                log.warning(
                    "training went the wrong way: the loss rose by %.1f%% over %d steps (now %r); lr=%g is likely "
                    "too large: try a smaller optim.lr (optim.lr=auto picks one for your data)",
                    -100 * fell,
                    len(self.losses),
                    self.losses[-1],
                    self.hparams.lr,
                )
            return
        before, now = self.losses[-1 - window], self.losses[-1]
        if abs(before - now) <= 0.01 * abs(before):
            log.warning(
                "training stalled: the loss moved less than 1%% over the last %d steps (now %r) with %.0f%% of "
                "hidden units dead (ReLU input negative for every row); lr=%g is likely too large, try a smaller one",
                window,
                now,
                100 * self.dead_units,
                self.hparams.lr,
            )


def _regression_metrics(prefix: str) -> MetricCollection:
    # Built afresh for each stage rather than cloned from one: a deep copy costs twice as much.
    return MetricCollection(
        {"mse": MeanSquaredError(), "r2": R2Score(), "explained_variance": ExplainedVariance()}, prefix=prefix
    )


class UpdateProgressBar(TQDMProgressBar):
    """Lightning's terminal progress bar, counting updates (``trainer.global_step``) rather than training steps.

    ``max_steps`` counts updates, and with ``updates_per_step`` > 1 one training step runs several:
    Lightning's own bar counts training steps against a total of updates, so at the seed's default
    (50 per step) it ends a 300-update fit at ``6/300`` with an ETA of minutes. This bar counts
    every update against the updates the epoch can run, so its count, its rate (updates per
    second) and its ETA are right. Pass it to your own Trainer in ``callbacks``.

    Example:
        >>> trainer = L.Trainer(max_steps=300, callbacks=[UpdateProgressBar()], logger=False)
        >>> type(trainer.progress_bar_callback).__name__  # in place of Lightning's default bar
        'UpdateProgressBar'
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._first_update = trainer.global_step
        per_step = getattr(pl_module, "hparams", {}).get("updates_per_step", 1)
        # The full batch's loader never ends (inf batches): then max_steps alone sets the total.
        updates = trainer.num_training_batches * per_step
        if trainer.max_steps > 0:
            updates = min(updates, trainer.max_steps - trainer.global_step)
        self.train_progress_bar.total = None if math.isinf(updates) else int(updates)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self.train_progress_bar
        if self.is_enabled and bar is not None and not bar.disable:
            bar.n = trainer.global_step - self._first_update  # tqdm's rate and ETA follow n over elapsed time
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # redraws the bar
