"""The update paths (twolayer_lightning.updates): the settling rule, and Lightning's private step counters.

The arithmetic of every path is the parity tests' (tests/test_parity.py); here: which path a fit
takes, and that a Lightning whose step counters are missing or no longer count ends a fit with
one line instead of training uncounted, or forever.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer

from twolayer_lightning import InPlaceSGD, LitTwoLayerNet, SyntheticRegressionData
from twolayer_lightning.errors import UnsupportedLightningError
from twolayer_lightning.stacked import StackedFit
from twolayer_lightning.updates import TESTED_LIGHTNING, UPDATE_PATHS, settle_path

COUNTERS = ("_on_before_step", "_on_after_step")  # LightningOptimizer's, by name: what CountedUpdate calls


def in_place_sgd() -> LightningOptimizer:
    return LightningOptimizer(InPlaceSGD([torch.nn.Parameter(torch.ones(2))], lr=0.1))


def not_asked() -> LightningOptimizer:
    raise AssertionError("the optimizer was looked at, though the path did not need it")


@pytest.mark.parametrize(
    ("asked", "device_type", "world_size", "taken"),
    [
        ("auto", "cpu", 1, "handwritten"),  # proven bitwise on a CPU by the parity tests
        ("auto", "cuda", 1, "direct"),
        ("auto", "mps", 1, "direct"),
        ("handwritten", "cuda", 1, "handwritten"),
        ("direct", "cpu", 1, "direct"),
        ("cuda_graph", "cuda", 1, "cuda_graph"),
        ("lightning", "cpu", 1, "lightning"),
    ],
)
def test_one_process_takes_the_path_asked_for_and_auto_by_device(asked, device_type, world_size, taken):
    assert settle_path(asked, device_type, world_size, in_place_sgd) == taken


@pytest.mark.parametrize("asked", ["auto", "handwritten", "direct", "lightning"])
def test_several_processes_take_the_lightning_path(asked):
    """DDP syncs gradients in Lightning's backward; the optimizer does not matter then."""
    assert settle_path(asked, "cuda", 2, not_asked) == "lightning"


@pytest.mark.parametrize(
    ("device_type", "world_size", "message"),
    [
        ("cpu", 1, r"update_path='cuda_graph' needs a CUDA device, and this fit runs on cpu; use update_path='direct'"),
        ("cuda", 2, r"update_path='cuda_graph' runs in one process, and this fit has 2; use update_path='lightning'"),
    ],
)
def test_cuda_graph_needs_cuda_and_one_process(device_type, world_size, message):
    with pytest.raises(ValueError, match=message):
        settle_path("cuda_graph", device_type, world_size, not_asked)


def test_another_optimizer_takes_the_lightning_path_with_a_warning():
    def torch_sgd() -> LightningOptimizer:
        return LightningOptimizer(torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1))

    with pytest.warns(UserWarning, match=r"needs configure_optimizers to return an InPlaceSGD, not SGD"):
        assert settle_path("auto", "cpu", 1, torch_sgd) == "lightning"


def test_without_step_counters_the_lightning_path_is_taken_with_the_tested_version():
    def without_counters() -> SimpleNamespace:  # an optimizer as a Lightning without the two methods wraps it
        return SimpleNamespace(optimizer=InPlaceSGD([torch.nn.Parameter(torch.ones(2))], lr=0.1))

    message = rf"has no _on_before_step/_on_after_step.*tested with lightning {TESTED_LIGHTNING}\.x.*taking"
    with pytest.warns(UserWarning, match=message):
        assert settle_path("direct", "cpu", 1, without_counters) == "lightning"


def test_path_names_are_those_the_config_and_the_module_accept():
    assert UPDATE_PATHS == ("auto", "handwritten", "direct", "lightning", "cuda_graph")
    for path in UPDATE_PATHS:
        assert LitTwoLayerNet(5, 4, 2, update_path=path).hparams.update_path == path


def test_updates_module_imports_neither_torch_nor_lightning():
    """config.py takes the path names from updates.py, and must stay light to import."""
    path = Path(__file__).resolve().parents[1] / "src" / "twolayer_lightning" / "updates.py"
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('updates_alone', {str(path)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(sorted(m for m in ('torch', 'lightning', 'numpy') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# Lightning's private step counters, missing or changed: one line, and the fit ends.


def fast_trainer(max_steps: int) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        max_time={"seconds": 20},  # a guard for this test only: uncounted updates would never reach max_steps
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def member(seed: int, update_path: str = "auto") -> tuple[LitTwoLayerNet, SyntheticRegressionData]:
    """A small network and its data, drawn as a run draws them."""
    generator = torch.Generator().manual_seed(seed)
    data = SyntheticRegressionData(8, 5, 2, generator=generator)
    return LitTwoLayerNet(5, 4, 2, lr=1e-3, generator=generator, update_path=update_path), data


def fit_stacked(
    exact: bool, max_steps: int, paths: tuple[str, str] = ("auto", "auto")
) -> tuple[L.Trainer, list[LitTwoLayerNet]]:
    """Two members trained as one StackedFit on their full batches; returns the Trainer and the members."""
    members, datas = zip(*(member(seed, path) for seed, path in enumerate(paths)), strict=True)
    trainer = fast_trainer(max_steps)
    batches = itertools.repeat(tuple((data.x, data.y) for data in datas))
    trainer.fit(StackedFit(members, exact=exact, updates_per_step=3), train_dataloaders=batches)
    return trainer, list(members)


@pytest.fixture
def counters_missing(monkeypatch):
    """A Lightning whose LightningOptimizer has no _on_before_step/_on_after_step."""
    real_getattribute = LightningOptimizer.__getattribute__

    def without_counters(self, name):
        if name in COUNTERS:
            raise AttributeError(name)
        return real_getattribute(self, name)

    monkeypatch.setattr(LightningOptimizer, "__getattribute__", without_counters)


@pytest.fixture
def counters_do_nothing(monkeypatch):
    """A Lightning whose loop no longer points the counters at global_step: they stay do-nothing functions."""
    real_setattr = LightningOptimizer.__setattr__

    def keep_first(self, name, value):
        if name in COUNTERS and name in vars(self):
            return  # the loop's counters never arrive
        real_setattr(self, name, value)

    monkeypatch.setattr(LightningOptimizer, "__setattr__", keep_first)


def assert_one_line_naming_the_version(err: pytest.ExceptionInfo, problem: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert problem in message
    assert f"tested with lightning {TESTED_LIGHTNING}.x" in message
    assert "update_path='lightning'" in message  # the way on with this Lightning


@pytest.mark.parametrize("exact", [True, False])
def test_a_stacked_fit_without_step_counters_fails_when_it_starts(counters_missing, exact):
    """A stacked fit has no lightning path to fall back to: it refuses to start."""
    with pytest.raises(UnsupportedLightningError) as err:
        fit_stacked(exact, max_steps=6)
    assert_one_line_naming_the_version(err, "has no _on_before_step/_on_after_step")


@pytest.mark.parametrize("update_path", ["handwritten", "direct"])
def test_a_fit_whose_step_counters_do_not_count_fails_at_the_first_update(counters_do_nothing, update_path):
    model, data = member(0, update_path)
    w1 = model.net.w1.detach().clone()
    trainer = fast_trainer(max_steps=6)
    with pytest.raises(UnsupportedLightningError) as err:
        trainer.fit(model, datamodule=data)
    assert_one_line_naming_the_version(err, "trainer.global_step went from 0 to 0, not 1")
    assert trainer.global_step == 0
    assert not torch.equal(model.net.w1.detach(), w1)  # the one update ran; none after it


@pytest.mark.parametrize("exact", [True, False])
def test_a_stacked_fit_whose_step_counters_do_not_count_fails_at_the_first_update(counters_do_nothing, exact):
    with pytest.raises(UnsupportedLightningError) as err:
        fit_stacked(exact, max_steps=6)
    assert_one_line_naming_the_version(err, "trainer.global_step went from 0 to 0, not 1")


# The stacked fit settles each member's path with the single run's rule.


@pytest.mark.parametrize(("exact", "taken"), [(True, "handwritten"), (False, "batched")])
def test_stacked_members_record_the_path_their_fit_took(exact, taken):
    trainer, members = fit_stacked(exact, max_steps=6)
    assert trainer.global_step == 6
    assert [m.update_path_taken for m in members] == [taken, taken]
    assert all(len(m.losses) == 6 for m in members)


def test_a_stacked_fit_refuses_a_member_whose_single_run_takes_the_lightning_path():
    with pytest.raises(ValueError, match=r"update_path='lightning' takes the 'lightning' path here.*on its own"):
        fit_stacked(exact=True, max_steps=6, paths=("auto", "lightning"))
