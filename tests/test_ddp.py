"""Scaling out: Lightning DDP over two CPU processes (gloo) trains the seed's full-batch problem.

Each rank takes a fixed half of the batch and scales its loss by the world size, so DDP's
averaged gradient is the full batch's. The reduction order differs from one process, so the
result is not bitwise; measured on a 2-core CPU with torch 2.13.0: the final weights differ by at
most 2.0e-6 after 500 updates, and the per-step losses by at most 1.7% relative (at the end,
where the loss is about 3e-5 and is the difference of nearly equal numbers) and 1.0 absolute.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from twolayer_lightning import run


def losses(run_dir: Path) -> torch.Tensor:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        return torch.tensor([float(row["train_loss"]) for row in csv.DictReader(f) if row["train_loss"]])


@pytest.mark.slow
def test_two_process_ddp_trains_the_same_problem_as_one_process(tmp_path, train_py):
    ddp_dir = tmp_path / "ddp"
    result = train_py("trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu", f"hydra.run.dir={ddp_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    single = run([], output_dir=tmp_path / "single")

    ddp_metrics = json.loads((ddp_dir / "metrics.json").read_text())
    assert ddp_metrics["global_step"] == single["global_step"] == 500
    assert (ddp_metrics["update_path"], single["update_path"]) == ("lightning", "handwritten")

    ddp_losses, single_losses = losses(ddp_dir), losses(tmp_path / "single")
    assert len(ddp_losses) == len(single_losses) == 500
    # Step 0 runs on the same initial weights: the sum of the two ranks' losses is the full loss.
    torch.testing.assert_close(ddp_losses[0], single_losses[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(ddp_losses, single_losses, rtol=5e-2, atol=5.0)

    ddp_state = torch.load(ddp_dir / "last.ckpt", weights_only=True)["state_dict"]
    single_state = torch.load(tmp_path / "single" / "last.ckpt", weights_only=True)["state_dict"]
    for name, value in single_state.items():
        torch.testing.assert_close(ddp_state[name], value, rtol=0, atol=1e-5)  # measured: 2.0e-6

    # One run dir: rank 0 alone writes the results, and the loss lines are not duplicated.
    assert sorted(p.name for p in ddp_dir.iterdir() if p.suffix in {".json", ".ckpt", ".png"}) == [
        "last.ckpt",
        "loss.png",
        "metrics.json",
    ]
    assert (ddp_dir / "train.log").read_text().count("step 499  loss") == 1
    assert result.stdout.count("step 499  loss") <= 1


def test_ddp_inside_a_sweep_is_refused_with_one_line(tmp_path, train_py):
    result = train_py("-m", "trainer=ddp", "trainer.accelerator=cpu", "seed=0,1", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot run inside a -m sweep" in errors[0]
    assert "Traceback" not in result.stderr
    assert "#1 :" not in result.stdout  # the sweep ended at its first job
    assert not list(tmp_path.glob("*/metrics.json"))


def test_ddp_refuses_several_updates_per_step(tmp_path):
    from twolayer_lightning import ConfigError

    with pytest.raises(ConfigError, match="updates_per_step"):
        run(["trainer=ddp", "trainer.updates_per_step=10"], output_dir=tmp_path)


def test_ddp_with_fewer_rows_than_processes_is_refused(tmp_path):
    from twolayer_lightning import ConfigError

    with pytest.raises(ConfigError, match=r"data\.num_samples=1 is not allowed with 2 DDP processes"):
        run(["trainer=ddp", "data.num_samples=1"], output_dir=tmp_path)
