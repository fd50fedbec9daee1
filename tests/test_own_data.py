"""An ordinary table out of the box: scaling that travels with the model, optim.lr=auto, predict on new rows,
no crash on a legal setting, and records a strict JSON parser reads."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from twolayer_lightning import LitTwoLayerNet, TrainingDivergedError, TwoLayerNet, run
from twolayer_lightning.config import ConfigError
from twolayer_lightning.data import DataError, FileRegressionData, check_split, load_regression_arrays
from twolayer_lightning.optim import describe_search, log_progress, search_lr


def strict_json(path: Path) -> dict:
    """metrics.json as a strict parser reads it: NaN and Infinity are refused."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def write_csv(path: Path, header: list[str], rows: np.ndarray) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows.tolist())
    return path


# --- TwoLayerNet: the init and the scaling buffers ---------------------------------------------------------------


def test_scaled_init_is_the_seeds_draws_over_sqrt_fan_in():
    seed_net = TwoLayerNet(12, 7, 3, generator=torch.Generator().manual_seed(4))
    scaled = TwoLayerNet(12, 7, 3, generator=torch.Generator().manual_seed(4), init="scaled")
    generator = torch.Generator().manual_seed(4)
    w1, w2 = torch.randn(12, 7, generator=generator), torch.randn(7, 3, generator=generator)
    assert torch.equal(seed_net.w1, w1) and torch.equal(seed_net.w2, w2)
    assert torch.equal(scaled.w1, w1 / math.sqrt(12)) and torch.equal(scaled.w2, w2 / math.sqrt(7))


def test_forward_is_the_seed_function_without_scaling_and_in_the_datas_units_with_it():
    net = TwoLayerNet(4, 6, 2, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(net(x), x.mm(net.w1).clamp(min=0).mm(net.w2))
    assert "x_mean" not in net.state_dict()

    x_mean, x_scale = torch.tensor([1.0, -2.0, 0.5, 3.0]), torch.tensor([2.0, 1.0, 4.0, 0.5])
    y_mean, y_scale = torch.tensor([10.0, -1.0]), torch.tensor([3.0, 0.25])
    net.set_scaling(x_mean, x_scale, y_mean, y_scale)
    torch.testing.assert_close(net(x), net.seed_forward((x - x_mean) / x_scale) * y_scale + y_mean)

    # The statistics travel in the state_dict: a net built with the same sizes loads them and predicts the same.
    fresh = TwoLayerNet(4, 6, 2, generator=torch.Generator().manual_seed(9))
    fresh.load_state_dict(net.state_dict())
    assert fresh.scaled and torch.equal(fresh(x), net(x))
    with pytest.raises(ValueError, match="x_scale"):
        net.set_scaling(x_mean, torch.zeros(4), y_mean, y_scale)


# --- the data: standardization, split seed, the split's limits, bad files -----------------------------------------


def test_standardize_uses_the_training_rows_only_and_a_constant_column_gets_scale_1():
    x, y = torch.randn(30, 3, generator=torch.Generator().manual_seed(0)), torch.randn(30, 2)
    x[:, 2] = 7.0  # constant
    data = FileRegressionData(x, y, val_fraction=0.3, standardize=True, split_seed=5)
    x_train, y_train = x[data.train_indices], y[data.train_indices]
    x_mean, x_scale, y_mean, y_scale = data.scaling
    torch.testing.assert_close(x_mean, x_train.mean(0))
    torch.testing.assert_close(x_scale[:2], x_train[:, :2].std(0, correction=0))
    assert x_scale[2] == 1.0
    torch.testing.assert_close(y_scale, y_train.std(0, correction=0))
    xb, yb = next(iter(data.train_dataloader()))
    torch.testing.assert_close(xb, (x_train - x_mean) / x_scale)
    torch.testing.assert_close(yb, (y_train - y_mean) / y_scale)
    xv, yv = next(iter(data.val_dataloader()))
    assert torch.equal(xv, x[data.val_indices]) and torch.equal(yv, y[data.val_indices])  # the data's units


def test_split_seed_draws_the_split_and_seed_leaves_it_alone():
    x, y = torch.randn(50, 2), torch.randn(50, 1)
    splits = [FileRegressionData(x, y, val_fraction=0.2, seed=s, split_seed=3).val_indices for s in (0, 1, 2)]
    assert all(torch.equal(splits[0], other) for other in splits[1:])
    assert not torch.equal(splits[0], FileRegressionData(x, y, val_fraction=0.2, split_seed=4).val_indices)


@pytest.mark.parametrize(("val_fraction", "rows"), [(0.001, 442), (0.3, 3), (0.999, 442), (0.95, 10), (0.5, 2)])
def test_a_split_without_two_validation_rows_or_a_training_row_is_refused_with_a_value_that_works(val_fraction, rows):
    problem = check_split(val_fraction, rows)
    assert problem is not None and f"val_fraction={val_fraction}" in problem
    if rows < 3:
        assert problem.endswith("use 0 (no validation)")
        return
    suggested = float(problem.split("use at least " if "at least" in problem else "use at most ")[1].split()[0])
    assert check_split(suggested, rows) is None
    FileRegressionData(torch.zeros(rows, 1), torch.zeros(rows, 1), val_fraction=suggested)


def test_the_command_line_refuses_a_bad_split_in_one_line_before_writing(tmp_path):
    x, y = torch.randn(20, 2), torch.randn(20, 1)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    with pytest.raises(ConfigError) as info:
        run(
            [
                "data=files",
                f"data.x_path={tmp_path / 'x.npy'}",
                f"data.y_path={tmp_path / 'y.npy'}",
                "data.val_fraction=0.05",
            ],
            output_dir=tmp_path / "run",
        )
    assert info.value.problems[0].startswith("data.val_fraction=0.05 of 20 rows holds out 1 row")
    assert "use at least 0.051 " in info.value.problems[0]  # ceil(0.051 * 20) = 2
    assert not (tmp_path / "run").exists()


def test_sparse_and_refused_pt_files_get_one_line_with_the_reason(tmp_path):
    torch.save(torch.eye(4).to_sparse(), tmp_path / "sparse.pt")
    with pytest.raises(DataError, match=r"sparse_coo tensor .*to_dense"):
        load_regression_arrays(tmp_path / "sparse.pt", tmp_path / "sparse.pt")

    torch.save({"x": torch.zeros(3, 2), "y": logging.getLogger("a")}, tmp_path / "object.pt")
    with pytest.raises(DataError) as info:
        load_regression_arrays(tmp_path / "object.pt")
    message = str(info.value)
    assert "logging" in message and "\n" not in message and "\x1b" not in message
    assert "weights_only=False" not in message and "weights_only`" not in message


def test_a_float32_cast_that_changes_whole_numbers_warns_naming_the_column(tmp_path, caplog):
    values = np.array([[1, 2**24 + 1], [2, 5]], dtype=np.int64)
    path = write_csv(tmp_path / "t.csv", ["small", "id"], values)
    with caplog.at_level(logging.WARNING, logger="twolayer_lightning.data"):
        load_regression_arrays(path, target_columns=["small"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "column 'id'" in warnings[0] and "16777217" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="twolayer_lightning.data"):
        load_regression_arrays(write_csv(tmp_path / "ok.csv", ["a", "b"], values % 1000), target_columns=["a"])
    assert not caplog.records


# --- optim.lr=auto ---------------------------------------------------------------------------------------------


def test_search_lr_drops_diverging_members_and_is_seeded():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=generator)
    y = x[:, :1] * 2 - x[:, 1:2] + 0.1 * torch.randn(60, 1, generator=generator)
    net = TwoLayerNet(4, 8, 1, generator=generator, init="scaled")
    grid = (1e-3, 1e-2, 1e-1, 1e3)  # the last diverges
    found = search_lr(x, y, net.w1, net.w2, steps=50, seed=1, lr_per_row=grid)
    assert found["held_out_mse"][-1] is None and all(v is not None for v in found["held_out_mse"][:-1])
    assert found["lr"] in found["candidates"] and found["lr"] != found["candidates"][-1]
    assert found["candidates"] == [c / 60 for c in grid]  # the fit's lr: per row over the fit's rows per update
    assert (found["fit_rows"], found["held_out_rows"]) == (48, 12)
    best = min(v for v in found["held_out_mse"] if v is not None)
    assert found["held_out_mse"][found["candidates"].index(found["lr"])] == best
    assert search_lr(x, y, net.w1, net.w2, steps=50, seed=1, lr_per_row=grid) == found
    with pytest.raises(ValueError, match="every candidate"):
        search_lr(x, y, net.w1, net.w2, steps=50, lr_per_row=(1e4,))


def test_search_lr_never_picks_an_lr_that_diverges_on_all_the_fit_rows():
    # Breast cancer's first 456 rows, texture as the target and the other 29 features as inputs: the range
    # test (365 rows) scores 4.72e-4 best next to a diverging 1.02e-3, and the full-batch fit on all 456
    # rows diverged at that lr by step 10. The pick must be stable on the fit's own rows.
    datasets = pytest.importorskip("sklearn.datasets")
    table = torch.tensor(datasets.load_breast_cancer().data[:456], dtype=torch.float32)
    table = (table - table.mean(0)) / table.std(0, unbiased=False)
    x, y = torch.cat([table[:, :1], table[:, 2:]], dim=1), table[:, 1:2]
    net = TwoLayerNet(29, 10, 1, generator=torch.Generator().manual_seed(0), init="scaled")
    found = search_lr(x, y, net.w1, net.w2, steps=500)
    w1, w2 = net.w1.detach().clone(), net.w2.detach().clone()
    for _ in range(500):  # the seed's full-batch update on all 456 rows at the picked lr
        h = (x @ w1).clamp(min=0)  # (N, H)
        grad_y = 2 * (h @ w2 - y)  # (N, D_out)
        grad_h = (grad_y @ w2.t()) * (h > 0)
        w1, w2 = w1 - found["lr"] * x.t() @ grad_h, w2 - found["lr"] * h.t() @ grad_y
    assert torch.isfinite((h @ w2 - y).pow(2).sum())
    best = min(v for v in found["held_out_mse"] if v is not None)
    skipped = found["candidates"][found["held_out_mse"].index(best)]
    assert found["skipped_as_diverging_on_all_rows"] == [skipped] and found["lr"] < skipped
    assert f"skipped as diverging on all training rows: {skipped:.3g}" in describe_search(found)
    assert search_lr(x, y, net.w1, net.w2, steps=500) == found  # deterministic


def test_search_lr_reports_progress_and_finds_the_same_lr_bit_for_bit(caplog):
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=generator), torch.randn(40, 2, generator=generator)
    net = TwoLayerNet(5, 8, 2, generator=generator, init="scaled")
    calls = []
    found = search_lr(
        x, y, net.w1, net.w2, steps=30, batch_size=7, progress=lambda *a: calls.append(a), progress_seconds=0
    )
    assert [(done, total) for done, total, _ in calls] == [(k, 30) for k in range(1, 31)]  # every step, here
    assert calls[-1][2] == 0 and all(left >= 0 for _, _, left in calls)
    assert search_lr(x, y, net.w1, net.w2, steps=30, batch_size=7) == found  # the same floats, bit for bit
    with caplog.at_level(logging.INFO, logger="twolayer_lightning"):
        log_progress(12, 40, 7.4)
    assert caplog.messages == ["range test: 12 of 40 steps, about 7 s left"]


def test_search_lr_on_fewer_than_5_rows_says_it_scored_on_its_training_rows(tmp_path, caplog):
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 2, generator=generator), torch.randn(4, 1, generator=generator)
    net = TwoLayerNet(2, 3, 1, generator=generator, init="scaled")
    found = search_lr(x, y, net.w1, net.w2, steps=5)
    assert (found["fit_rows"], found["held_out_rows"], found["scored_on"]) == (4, 0, "fit_rows")
    assert "held-out" not in describe_search(found) and "scored on those same rows" in describe_search(found)

    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    files = ["data=files", f"data.x_path={tmp_path / 'x.npy'}", f"data.y_path={tmp_path / 'y.npy'}"]
    with caplog.at_level(logging.INFO, logger="twolayer_lightning"):
        metrics = run([*files, "trainer.max_steps=5", "logger=none"], output_dir=tmp_path / "run")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("optim.lr=auto"))
    assert "held-out" not in line and "4 training rows, scored on those same rows" in line
    assert strict_json(tmp_path / "run" / "metrics.json")["lr_search"]["scored_on"] == "fit_rows"
    assert metrics["lr_search"]["held_out_rows"] == 0


# --- the whole user path on scikit-learn's diabetes table -------------------------------------------------------


def test_diabetes_with_no_setting_comes_within_10_percent_of_ridge_then_predicts_new_rows(tmp_path):
    """`data=files data.x_path=... data.val_fraction=0.2` and nothing else: val R2 >= 0.9 x Ridge's on the same
    split and scaling. Then the checkpoint predicts unlabelled rows in the data's units and validates."""
    datasets = pytest.importorskip("sklearn.datasets")
    linear_model = pytest.importorskip("sklearn.linear_model")
    metrics_module = pytest.importorskip("sklearn.metrics")
    bunch = datasets.load_diabetes()
    table = np.column_stack([bunch.data, bunch.target])
    path = write_csv(tmp_path / "diabetes.csv", [*bunch.feature_names, "target"], table)
    base = ["data=files", f"data.x_path={path}", "data.target_columns=[target]", "data.val_fraction=0.2"]

    metrics = run(base, output_dir=tmp_path / "run")

    data = FileRegressionData(*load_regression_arrays(path, target_columns=["target"]), val_fraction=0.2)
    x_train, y_train = data.x[data.train_indices].double().numpy(), data.y[data.train_indices].double().numpy()
    x_val, y_val = data.x[data.val_indices].double().numpy(), data.y[data.val_indices].double().numpy()
    x_mean, x_std, y_mean, y_std = x_train.mean(0), x_train.std(0), y_train.mean(0), y_train.std(0)
    ridge = linear_model.Ridge().fit((x_train - x_mean) / x_std, (y_train - y_mean) / y_std)
    ridge_r2 = metrics_module.r2_score(y_val, ridge.predict((x_val - x_mean) / x_std) * y_std + y_mean)
    assert ridge_r2 > 0.3
    assert metrics["val_r2"] >= 0.9 * ridge_r2, (metrics["val_r2"], ridge_r2)

    on_disk = strict_json(tmp_path / "run" / "metrics.json")
    assert on_disk["lr"] == on_disk["lr_search"]["lr"] and on_disk["lr"] in on_disk["lr_search"]["candidates"]
    assert on_disk["lr_search"]["fit_rows"] + on_disk["lr_search"]["held_out_rows"] == len(data.train_indices)
    assert {"torch", "lightning", "device"} <= set(on_disk["versions"])
    checkpoint = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["lr"] == on_disk["lr"]  # a resume trains on with the lr used

    # New rows without a target column, in another column order: picked by name, predicted in the data's units.
    new = write_csv(tmp_path / "new.csv", list(reversed(bunch.feature_names)), bunch.data[:5, ::-1])
    predicted = run(
        ["data=files", f"data.x_path={new}", "mode=predict", f"ckpt_path={tmp_path / 'run' / 'last.ckpt'}"],
        output_dir=tmp_path / "predict",
    )
    model = LitTwoLayerNet.load_from_checkpoint(tmp_path / "run" / "last.ckpt", weights_only=True)
    with torch.no_grad():
        expected = model(torch.from_numpy(bunch.data[:5]).float())
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "predict" / "predictions.npy")), expected)
    with (tmp_path / "predict" / "predictions.csv").open(newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["target"] and len(rows) == 6
    assert predicted["global_step"] == 500 and strict_json(tmp_path / "predict" / "metrics.json")["global_step"] == 500

    validated = run([*base, "mode=validate", f"ckpt_path={tmp_path / 'run' / 'last.ckpt'}"], output_dir=tmp_path / "v")
    assert validated["val_r2"] == pytest.approx(metrics["val_r2"], abs=1e-6)
    assert validated["global_step"] == 500
    assert strict_json(tmp_path / "v" / "metrics.json")["train_loss"] is None  # no training in validate


# --- no crash on a legal setting, and warnings that name the cause ----------------------------------------------


def test_one_row_mini_batches_train_and_report(tmp_path):
    """5 training rows in batches of 2 end every epoch with a one-row batch; a report lands on one of them
    (torchmetrics' R2 needs two rows: that report has the MSE alone)."""
    x, y = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), torch.randn(5, 1)
    np.savez(tmp_path / "xy.npz", x=x.numpy(), y=y.numpy())
    metrics = run(
        [
            "data=files",
            f"data.x_path={tmp_path / 'xy.npz'}",
            "data.batch_size=2",
            "trainer.max_steps=6",
            "trainer.log_every_n_steps=2",
        ],
        output_dir=tmp_path / "run",
    )
    assert metrics["status"] == "ok" and metrics["global_step"] == 6
    with (tmp_path / "run" / "csv" / "metrics.csv").open(newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["train_mse"]]
    # Steps 0-2 are epoch 0's batches of 2, 2 and 1 rows, steps 3-5 epoch 1's: step 5 is one row, step 1 two.
    assert [row["step"] for row in rows] == ["1", "3", "5"]
    assert rows[0]["train_r2"] != "" and rows[2]["train_r2"] == ""


def test_a_diverged_run_writes_strict_json_that_says_why(tmp_path):
    with pytest.raises(TrainingDivergedError):
        run(["optim.lr=1e-3", "logger=none"], output_dir=tmp_path)
    metrics = strict_json(tmp_path / "metrics.json")
    assert metrics["status"] == "diverged" and metrics["train_loss"] is None
    assert metrics["non_finite"]["train_loss"] in ("inf", "nan") and metrics["diverged_at_step"] >= 0


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["optim.lr=1e-20", "data.standardize=true"], "likely too small"),
        (["optim.lr=1e-20", "data.standardize=false", "model.init=seed"], "data.standardize=true"),
    ],
)
def test_a_loss_that_hardly_moves_names_the_cause(tmp_path, caplog, overrides, says):
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0)) * 100 + 1000
    np.savez(tmp_path / "xy.npz", x=x.numpy(), y=(x[:, :1] * 3).numpy())
    with caplog.at_level(logging.WARNING, logger="twolayer_lightning.module"):
        run(
            ["data=files", f"data.x_path={tmp_path / 'xy.npz'}", "trainer.max_steps=20", "logger=none", *overrides],
            output_dir=tmp_path / "run",
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and says in warnings[0] and "hardly moved" in warnings[0]


def test_a_resumed_fit_gets_no_whole_run_verdict_from_its_tail(tmp_path, caplog):
    """A resume sees only the last steps of its run: a converged run that moves little is not 'lr too small'."""
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    np.savez(tmp_path / "xy.npz", x=x.numpy(), y=(x[:, :1] * 3).numpy())
    common = ["data=files", f"data.x_path={tmp_path / 'xy.npz'}", "logger=none", "optim.lr=1e-20"]
    run([*common, "trainer.max_steps=20"], output_dir=tmp_path / "a")  # warns: lr 1e-20 is too small
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="twolayer_lightning.module"):
        run([*common, "trainer.max_steps=40", f"ckpt_path={tmp_path / 'a' / 'last.ckpt'}"], output_dir=tmp_path / "b")
    assert not [r.getMessage() for r in caplog.records if "hardly moved" in r.getMessage()]
