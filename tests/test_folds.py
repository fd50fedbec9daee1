"""One fold's run of a k-fold cross-validation (data.folds=K data.fold=i): the folds, what the fold's model
sees of the rows, the metrics it records, and every refusal in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from twolayer_lightning import LitTwoLayerNet, run
from twolayer_lightning.cli import compose, objective
from twolayer_lightning.config import ConfigError, updates_per_step, validate
from twolayer_lightning.data import FileRegressionData, check_folds, fold_indices
from twolayer_lightning.stacked import why_alone

# A config of one CSV, for the checks that need no file (config.validate does not open it).
FILES = ["data=files", "data.x_path=table.csv", "data.target_columns=[y]"]


def save_xy(folder: Path, x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """x and y as two .npy files; the overrides that train on them."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "x.npy", x.numpy())
    np.save(folder / "y.npy", y.numpy())
    return ["data=files", f"data.x_path={folder / 'x.npy'}", f"data.y_path={folder / 'y.npy'}"]


def table(rows: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A small regression table whose columns have means and scales far from 0 and 1."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 3, generator=generator) * torch.tensor([1.0, 5.0, 0.2]) + torch.tensor([3.0, -10.0, 1.0])
    y = x[:, :1] * 2 - x[:, 1:2] + torch.randn(rows, 1, generator=generator)  # (N, 1)
    return x, y


# --- the folds -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "folds"), [(10, 2), (11, 3), (442, 5), (9, 4)])
def test_the_folds_partition_the_rows_in_sizes_within_one_and_are_seeded(rows, folds):
    parts = fold_indices(rows, folds, split_seed=3)
    assert len(parts) == folds
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(rows))  # every row in exactly one fold
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1
    assert all(torch.equal(part, part.sort().values) for part in parts)  # each in file order
    again = fold_indices(rows, folds, split_seed=3)
    assert all(torch.equal(a, b) for a, b in zip(parts, again, strict=True))
    other = fold_indices(rows, folds, split_seed=4)
    assert not all(torch.equal(a, b) for a, b in zip(parts, other, strict=True))


def test_the_folds_of_a_split_seed_stay_the_same_between_releases():
    # A user's fold i must be the same rows tomorrow: these are split_seed=0's folds of 10 rows.
    assert [part.tolist() for part in fold_indices(10, 3, split_seed=0)] == [[1, 4, 5, 7], [0, 3, 9], [2, 6, 8]]


def test_fold_i_validates_on_fold_i_and_trains_on_the_others_whatever_the_seed():
    x, y = table(23)
    parts = fold_indices(23, 4, split_seed=7)
    for i, part in enumerate(parts):
        runs = [FileRegressionData(x, y, folds=4, fold=i, split_seed=7, seed=seed) for seed in (0, 1)]
        for data in runs:
            assert torch.equal(data.val_indices, part)
            assert torch.equal(data.train_indices, torch.cat(parts[:i] + parts[i + 1 :]).sort().values)
            xv, yv = next(iter(data.val_dataloader()))
            assert torch.equal(xv, x[part]) and torch.equal(yv, y[part])  # the data's units
    # with_fold: the same rows and settings, another fold (as a cross-validation over all folds builds them).
    second = FileRegressionData(x, y, folds=4, fold=0, split_seed=7, standardize=True).with_fold(2)
    built = FileRegressionData(x, y, folds=4, fold=2, split_seed=7, standardize=True)
    assert torch.equal(second.val_indices, parts[2]) and torch.equal(second.train_indices, built.train_indices)
    assert all(torch.equal(a, b) for a, b in zip(second.scaling, built.scaling, strict=True))


def test_each_fold_standardizes_with_its_own_training_rows_only():
    x, y = table(30)
    x[:3] += 1000.0  # far-off rows: any leak of them into a fold's statistics shows
    parts = fold_indices(30, 3, split_seed=0)
    for i in range(len(parts)):
        data = FileRegressionData(x, y, folds=3, fold=i, standardize=True)
        train = torch.cat(parts[:i] + parts[i + 1 :]).sort().values
        x_train, y_train = x[train], y[train]
        expected = (x_train.mean(0), x_train.std(0, correction=0), y_train.mean(0), y_train.std(0, correction=0))
        for got, want in zip(data.scaling, expected, strict=True):
            torch.testing.assert_close(got, want)
        # What training and optim.lr=auto's range test see (training.choose_lr takes data.training_rows).
        xs, ys = data.training_rows
        torch.testing.assert_close(xs, (x_train - expected[0]) / expected[1])
        torch.testing.assert_close(ys, (y_train - expected[2]) / expected[3])


# --- a fold's run end to end -------------------------------------------------------------------------------------


def test_a_folds_run_is_the_run_on_its_training_rows_alone_validated_on_fold_i(tmp_path):
    x, y = table(60)
    folds, fold = 4, 1
    steps = ["trainer.max_steps=20", "trainer.val_every_n_steps=10", "trainer.log_every_n_steps=10", "logger=none"]
    data = save_xy(tmp_path / "all", x, y)
    out = tmp_path / "fold"
    metrics = run([*data, f"data.folds={folds}", f"data.fold={fold}", *steps], output_dir=out)
    parts = fold_indices(60, folds, split_seed=0)
    train = torch.cat(parts[:fold] + parts[fold + 1 :]).sort().values

    # Nothing of fold 1 reaches its model: standardization, optim.lr=auto and the fit equal, bit for bit,
    # a run on a file of the training rows alone.
    alone = run([*save_xy(tmp_path / "train", x[train], y[train]), *steps], output_dir=tmp_path / "alone")
    assert metrics["lr"] == alone["lr"] and metrics["train_loss"] == alone["train_loss"]
    assert {k: v for k, v in metrics["lr_search"].items() if k != "seconds"} == {
        k: v for k, v in alone["lr_search"].items() if k != "seconds"
    }
    model = LitTwoLayerNet.load_from_checkpoint(out / "last.ckpt", map_location="cpu", weights_only=True)
    twin = LitTwoLayerNet.load_from_checkpoint(tmp_path / "alone" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values(), strict=True))

    # It validates on fold 1's rows, as a run with validation rows does; a sweeper sees val_loss.
    assert (metrics["folds"], metrics["fold"], metrics["num_samples"]) == (folds, fold, 60)
    assert "folds" not in alone and "fold" not in alone
    assert objective(metrics) == metrics["val_loss"]
    assert (out / "checkpoints" / "best.ckpt").is_file()
    with torch.no_grad():
        error = model(x[parts[fold]]) - y[parts[fold]]  # (N_val, 1), the data's units
    target = y[parts[fold]]
    torch.testing.assert_close(metrics["val_loss"], error.square().sum().item(), rtol=1e-5, atol=0)
    torch.testing.assert_close(metrics["val_mse"], error.square().mean().item(), rtol=1e-5, atol=0)
    r2 = 1 - error.square().sum() / (target - target.mean()).square().sum()
    torch.testing.assert_close(metrics["val_r2"], r2.item(), rtol=1e-5, atol=1e-6)

    # mode=validate with the same fold reproduces the recorded validation metrics.
    checked = run(
        [*data, f"data.folds={folds}", f"data.fold={fold}", "mode=validate", f"ckpt_path={out / 'last.ckpt'}"],
        output_dir=tmp_path / "validate",
    )
    for key in ("val_loss", "val_mse", "val_r2", "val_explained_variance"):
        assert checked[key] == metrics[key], key
    assert json.loads((tmp_path / "validate" / "metrics.json").read_text())["fold"] == fold


def test_a_folds_run_validates_where_a_run_with_validation_rows_does():
    # Its validations fire at their steps (updates_per_step divides val_every_n_steps), and the stacked
    # launcher runs it on its own, as any job with validation rows, so that it keeps best.ckpt and val metrics.
    cfg = compose([*FILES, "data.folds=5", "data.fold=2", "trainer.val_every_n_steps=10"])
    assert updates_per_step(cfg) == 10
    assert why_alone(cfg) == "validation rows (data.val_fraction or data.folds)"


# --- refusals, one line each -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            [*FILES, "data.folds=5", "data.fold=0", "data.val_fraction=0.2"],
            "data.folds=5 is not allowed with data.val_fraction=0.2: with data.folds, the fold data.fold is the "
            "validation rows; use one or the other",
        ),
        ([*FILES, "data.folds=1", "data.fold=0"], "data.folds=1 is not allowed: use a whole number >= 2"),
        ([*FILES, "data.folds=0", "data.fold=0"], "data.folds=0 is not allowed: use a whole number >= 2"),
        ([*FILES, "data.fold=2"], "data.fold=2 is not allowed without data.folds: add data.folds=K"),
        ([*FILES, "data.folds=5", "data.fold=5"], "data.fold=5 is not allowed with data.folds=5: use a whole number "),
        ([*FILES, "data.folds=5", "data.fold=-1"], "data.fold=-1 is not allowed with data.folds=5"),
        (["data.folds=3", "data.fold=0"], "data.folds=3 is not allowed with synthetic data: folds split a user's rows"),
        (
            [*FILES, "data.folds=5"],
            "data.folds=5 without data.fold is not there yet: a whole cross-validation (all folds in one run) is to "
            "come; run each fold on its own with data.fold=i for i in 0..4",
        ),
    ],
)
def test_a_config_that_cannot_be_one_folds_run_is_refused_in_one_line(overrides, line):
    with pytest.raises(ConfigError) as info:
        validate(compose(overrides), cuda_available=False)
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith(line), info.value.problems


@pytest.mark.parametrize(
    ("rows", "folds", "line"),
    [
        (7, 8, "data.folds=8 is more than the 7 rows, so some fold would have no row; use at most 3 folds"),
        (
            9,
            5,
            "data.folds=5 of 9 rows gives 1 of the folds 1 validation row, and R2 and explained variance need at "
            "least 2; use at most 4 folds",
        ),
        (3, 2, "data.folds=2 of 3 rows gives 1 of the folds 1 validation row"),
    ],
)
def test_folds_the_rows_cannot_fill_are_refused_in_one_line_before_writing(tmp_path, rows, folds, line):
    x, y = table(rows)
    with pytest.raises(ConfigError) as info:
        run([*save_xy(tmp_path, x, y), f"data.folds={folds}", "data.fold=0"], output_dir=tmp_path / "run")
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith(line), info.value.problems
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("rows", [4, 5, 9, 442])
def test_the_number_of_folds_a_refusal_suggests_works(rows):
    problem = check_folds(rows, rows)
    most = int(problem.split("use at most ")[1].split()[0])
    assert check_folds(most, rows) is None and check_folds(most + 1, rows) is not None
    assert "too few" in check_folds(2, 3)


def test_the_data_module_refuses_what_the_config_refuses():
    x, y = table(12)
    for kwargs, words in [
        ({"folds": 3, "fold": 0, "val_fraction": 0.2}, "use one or the other"),
        ({"folds": 3}, "fold=None is not allowed with folds=3"),
        ({"fold": 1}, "fold=1 is not allowed without folds"),
        ({"folds": 1, "fold": 0}, "folds=1 is not allowed"),
    ]:
        with pytest.raises(ValueError, match=words):
            FileRegressionData(x, y, **kwargs)
    with pytest.raises(ValueError, match="needs data built with folds=K"):
        FileRegressionData(x, y).with_fold(0)


@pytest.mark.slow
def test_train_py_refuses_a_whole_cross_validation_in_one_line_for_now(tmp_path, train_py):
    x, y = table(20)
    out = tmp_path / "run"
    result = train_py(*save_xy(tmp_path, x, y), "data.folds=5", f"hydra.run.dir={out}")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data.fold=i for i in 0..4" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
