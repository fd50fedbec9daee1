"""The contract: the package computes exactly what the seed's raw autograd loop computes.

The seed's section 三 loop is written out plainly below and run beside the package in the same
process, on the same device, from the same initial tensors; every step's loss and the final
weights are compared with ``torch.equal``.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from twolayer_lightning import InPlaceSGD, LitTwoLayerNet, SyntheticRegressionData, run
from twolayer_lightning.model import sum_squared_error

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; this torch sees none")
GPU = [pytest.mark.gpu, CUDA]
# (device, update_path, updates_per_step): every path, and several updates per training step that
# do not divide the step counts below (7), so the last training step runs fewer.
RUNS = [
    ("cpu", "handwritten", 1),
    ("cpu", "handwritten", 7),
    ("cpu", "direct", 1),
    ("cpu", "direct", 7),
    ("cpu", "lightning", 1),
    ("cpu", "lightning", 7),
    pytest.param("cuda", "handwritten", 1, marks=GPU),
    pytest.param("cuda", "handwritten", 7, marks=GPU),
    pytest.param("cuda", "direct", 7, marks=GPU),
    pytest.param("cuda", "lightning", 1, marks=GPU),
    pytest.param("cuda", "cuda_graph", 1, marks=GPU),
    pytest.param("cuda", "cuda_graph", 7, marks=GPU),
]


def seed_initial_tensors(seed: int, n: int, d_in: int, h: int, d_out: int) -> tuple[torch.Tensor, ...]:
    """The seed's draws, in its order, after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    x = torch.randn(n, d_in)
    y = torch.randn(n, d_out)
    w1 = torch.randn(d_in, h)
    w2 = torch.randn(h, d_out)
    return x, y, w1, w2


def seed_loop(x, y, w1, w2, learning_rate: float, steps: int) -> tuple[list[float], torch.Tensor, torch.Tensor]:
    """The seed's section 三, verbatim but for returning the losses instead of printing them."""
    w1 = w1.clone().requires_grad_(True)
    w2 = w2.clone().requires_grad_(True)
    losses = []
    for _ in range(steps):
        y_pred = x.mm(w1).clamp(min=0).mm(w2)
        loss = (y_pred - y).pow(2).sum()
        losses.append(loss.item())
        loss.backward()
        with torch.no_grad():
            w1 -= learning_rate * w1.grad
            w2 -= learning_rate * w2.grad
            w1.grad.zero_()
            w2.grad.zero_()
    return losses, w1.detach(), w2.detach()


def fast_trainer(accelerator: str, max_steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def fit_package(seed, sizes, lr, steps, accelerator, activation="clamp", update_path="direct", updates_per_step=1):
    n, d_in, h, d_out = sizes
    generator = torch.Generator().manual_seed(seed)
    data = SyntheticRegressionData(n, d_in, d_out, generator=generator)
    model = LitTwoLayerNet(
        d_in,
        h,
        d_out,
        lr=lr,
        activation=activation,
        generator=generator,
        update_path=update_path,
        updates_per_step=updates_per_step,
    )
    trainer = fast_trainer(accelerator, steps)
    trainer.fit(model, datamodule=data)
    return trainer, model


@pytest.mark.parametrize(("device", "update_path", "updates_per_step"), RUNS)
@pytest.mark.parametrize(
    ("seed", "sizes", "lr", "steps", "activation"),
    [
        (0, (64, 1000, 100, 10), 1e-6, 500, "clamp"),  # the seed's problem, all 500 steps
        (7, (32, 50, 20, 3), 1e-4, 60, "clamp"),
        (3, (64, 1000, 100, 10), 1e-6, 100, "function"),  # the custom autograd Function
    ],
)
def test_every_step_equals_the_seed_loop(device, update_path, updates_per_step, seed, sizes, lr, steps, activation):
    torch.set_float32_matmul_precision("highest")
    x, y, w1, w2 = seed_initial_tensors(seed, *sizes)
    expected_losses, expected_w1, expected_w2 = seed_loop(
        x.to(device), y.to(device), w1.to(device), w2.to(device), lr, steps
    )

    accelerator = "gpu" if device == "cuda" else "cpu"
    trainer, model = fit_package(seed, sizes, lr, steps, accelerator, activation, update_path, updates_per_step)

    assert trainer.global_step == steps
    assert len(model.losses) == steps
    mismatches = [t for t, (a, b) in enumerate(zip(model.losses, expected_losses, strict=True)) if a != b]
    assert not mismatches, f"first differing step {mismatches[0]}: {model.losses[mismatches[0]]} vs seed"
    assert torch.equal(model.net.w1.detach(), expected_w1)
    assert torch.equal(model.net.w2.detach(), expected_w2)


def test_default_config_equals_the_seed_script_with_manual_seed_0(tmp_path):
    metrics = run(["logger=none"], output_dir=tmp_path)
    expected_losses, _, _ = seed_loop(*seed_initial_tensors(0, 64, 1000, 100, 10), 1e-6, 500)
    assert metrics["train_loss"] == expected_losses[-1]
    assert metrics["global_step"] == 500


def test_seed_is_a_seed_even_when_zero(tmp_path):
    zero = run(["logger=none", "trainer.max_steps=5"], output_dir=tmp_path / "zero")
    one = run(["logger=none", "trainer.max_steps=5", "seed=1"], output_dir=tmp_path / "one")
    expected_zero, _, _ = seed_loop(*seed_initial_tensors(0, 64, 1000, 100, 10), 1e-6, 5)
    assert zero["train_loss"] == expected_zero[-1]
    assert zero["train_loss"] != one["train_loss"]


def test_in_place_sgd_step_is_the_seed_update():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(30, 20, generator=generator)
    grad = torch.randn(30, 20, generator=generator)
    expected = weight.clone()
    expected -= 1e-3 * grad

    param = torch.nn.Parameter(weight.clone())
    param.grad = grad.clone()
    InPlaceSGD([param], lr=1e-3).step()

    assert torch.equal(param.detach(), expected)
    assert torch.equal(param.grad, torch.zeros_like(grad))


# The two pitfalls the package is built around.


def test_pitfall_torch_sgd_is_not_bitwise_the_seed_update():
    """``torch.optim.SGD`` computes ``p.add_(grad, alpha=-lr)``: it rounds differently and drifts."""
    x, y, w1, w2 = seed_initial_tensors(0, 64, 1000, 100, 10)
    _, expected_w1, _ = seed_loop(x, y, w1, w2, 1e-6, 500)
    for foreach in (False, True):
        p1, p2 = torch.nn.Parameter(w1.clone()), torch.nn.Parameter(w2.clone())
        sgd = torch.optim.SGD([p1, p2], lr=1e-6, foreach=foreach)
        for _ in range(500):
            sum_squared_error(x.mm(p1).clamp(min=0).mm(p2), y).backward()
            sgd.step()
            sgd.zero_grad()
        assert not torch.equal(p1.detach(), expected_w1), f"foreach={foreach}"
        torch.testing.assert_close(p1.detach(), expected_w1, rtol=0, atol=1e-4)  # close, not equal


class InlineUpdate(LitTwoLayerNet):
    """The seed's update written inline in the training step, bypassing the optimizer."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = sum_squared_error(self(x), y)
        self.manual_backward(loss)
        with torch.no_grad():
            for p in self.net.parameters():
                p -= self.hparams.lr * p.grad
                p.grad.zero_()
        return loss


def test_pitfall_inline_update_is_not_counted_as_a_step():
    """Without ``opt.step()`` Lightning counts no update: ``global_step`` stays 0 and max_steps never stops it."""
    generator = torch.Generator().manual_seed(0)
    data = SyntheticRegressionData(8, 5, 2, generator=generator)
    model = InlineUpdate(5, 4, 2, generator=generator)
    trainer = fast_trainer("cpu", max_steps=3, max_time={"seconds": 1})  # max_time: it would never stop
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 0

    package = LitTwoLayerNet(5, 4, 2)
    counted = fast_trainer("cpu", max_steps=3)
    counted.fit(package, datamodule=data)
    assert counted.global_step == 3


def test_barebones_trainer_still_equals_the_seed_loop():
    """Trainer(barebones=True) sets log_every_n_steps=0 and forbids self.log: the module reports once, at the end."""
    x, y, w1, w2 = seed_initial_tensors(5, 16, 30, 8, 2)
    expected_losses, expected_w1, _ = seed_loop(x, y, w1, w2, 1e-4, 25)
    generator = torch.Generator().manual_seed(5)
    data = SyntheticRegressionData(16, 30, 2, generator=generator)
    model = LitTwoLayerNet(30, 8, 2, lr=1e-4, generator=generator)
    trainer = L.Trainer(accelerator="cpu", max_steps=25, barebones=True)
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 25
    assert model.losses == expected_losses
    assert torch.equal(model.net.w1.detach(), expected_w1)


# Update paths: what each one runs besides the update itself.


class HookCounter(L.Callback):
    def __init__(self) -> None:
        self.calls = {"on_before_backward": 0, "on_after_backward": 0, "on_before_optimizer_step": 0}

    def on_before_backward(self, trainer, pl_module, loss):
        self.calls["on_before_backward"] += 1

    def on_after_backward(self, trainer, pl_module):
        self.calls["on_after_backward"] += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.calls["on_before_optimizer_step"] += 1


@pytest.mark.parametrize(("update_path", "calls_per_update"), [("lightning", 1), ("direct", 0), ("handwritten", 0)])
def test_per_update_hooks_run_on_the_lightning_path_only(update_path, calls_per_update):
    """What the README promises: callbacks that need per-update hooks get them with update_path='lightning'."""
    generator = torch.Generator().manual_seed(0)
    data = SyntheticRegressionData(8, 5, 2, generator=generator)
    model = LitTwoLayerNet(5, 4, 2, generator=generator, update_path=update_path, updates_per_step=3)
    counter = HookCounter()
    trainer = fast_trainer("cpu", max_steps=10, callbacks=[counter])
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 10
    assert counter.calls == dict.fromkeys(counter.calls, 10 * calls_per_update)


class TorchSGD(LitTwoLayerNet):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def test_direct_path_with_another_optimizer_takes_the_lightning_path():
    """The direct path calls InPlaceSGD.update; a subclass with another optimizer still trains, via Lightning."""
    generator = torch.Generator().manual_seed(0)
    data = SyntheticRegressionData(8, 5, 2, generator=generator)
    model = TorchSGD(5, 4, 2, lr=1e-3, generator=generator)
    w1 = model.net.w1.detach().clone()
    with pytest.warns(UserWarning, match=r"needs configure_optimizers to return an InPlaceSGD, not SGD"):
        trainer = fast_trainer("cpu", max_steps=4)
        trainer.fit(model, datamodule=data)
    assert trainer.global_step == 4
    assert not torch.equal(model.net.w1.detach(), w1)


def test_direct_path_without_lightnings_step_counters_takes_the_lightning_path(monkeypatch):
    """The direct path counts updates with LightningOptimizer's private _on_before_step/_on_after_step.

    A Lightning without them must not train uncounted: the module warns and takes the public path,
    which stays exact.
    """
    from lightning.pytorch.core.optimizer import LightningOptimizer

    real_getattr = LightningOptimizer.__getattribute__

    def without_counters(self, name):
        if name in ("_on_before_step", "_on_after_step"):
            raise AttributeError(name)
        return real_getattr(self, name)

    x, y, w1, w2 = seed_initial_tensors(2, 16, 30, 8, 2)
    expected_losses, expected_w1, expected_w2 = seed_loop(x, y, w1, w2, 1e-4, 12)

    class Probe(LitTwoLayerNet):
        def on_train_start(self):  # where the module looks for them; the loop itself still sets them later
            monkeypatch.setattr(LightningOptimizer, "__getattribute__", without_counters)
            try:
                super().on_train_start()
            finally:
                monkeypatch.undo()

    generator = torch.Generator().manual_seed(2)
    data = SyntheticRegressionData(16, 30, 2, generator=generator)
    model = Probe(30, 8, 2, lr=1e-4, generator=generator, updates_per_step=5)
    with pytest.warns(UserWarning, match=r"has no _on_before_step/_on_after_step.*taking update_path='lightning'"):
        trainer = fast_trainer("cpu", max_steps=12)
        trainer.fit(model, datamodule=data)
    assert trainer.global_step == 12
    assert model.losses == expected_losses
    assert torch.equal(model.net.w1.detach(), expected_w1)
    assert torch.equal(model.net.w2.detach(), expected_w2)


def test_direct_path_under_ddp_takes_the_lightning_path():
    """DDP syncs gradients inside Lightning's backward: with several processes the module must take that path."""
    from types import SimpleNamespace

    model = LitTwoLayerNet(5, 4, 2)
    model._trainer = SimpleNamespace(world_size=2)  # what _settle_path asks of the Trainer first
    assert model._settle_path() == "lightning"
    graphed = LitTwoLayerNet(5, 4, 2, update_path="cuda_graph")
    graphed._trainer = SimpleNamespace(world_size=2)
    with pytest.raises(ValueError, match=r"needs a CUDA device|runs in one process"):
        graphed._settle_path()


def test_cuda_graph_path_on_the_cpu_is_refused_with_the_fix():
    generator = torch.Generator().manual_seed(0)
    data = SyntheticRegressionData(8, 5, 2, generator=generator)
    model = LitTwoLayerNet(5, 4, 2, generator=generator, update_path="cuda_graph")
    with pytest.raises(ValueError, match=r"update_path='cuda_graph' needs a CUDA device.*use update_path='direct'"):
        fast_trainer("cpu", max_steps=2).fit(model, datamodule=data)
    with pytest.raises(ValueError, match=r"update_path='graph' is not allowed; use one of auto, handwritten, direct"):
        LitTwoLayerNet(update_path="graph")


@pytest.mark.gpu
@CUDA
def test_cuda_graph_path_refuses_a_batch_it_was_not_captured_with():
    """Mini-batches give new tensors each step; the graph would silently keep training on the first."""
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 5, generator=generator), torch.randn(16, 2, generator=generator)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    model = LitTwoLayerNet(5, 4, 2, generator=generator, update_path="cuda_graph")
    with pytest.raises(ValueError, match=r"replays the batch it was captured with"):
        fast_trainer("gpu", max_steps=4).fit(model, train_dataloaders=loader)
