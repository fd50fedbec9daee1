"""A user's own regression data: the file formats, the errors for bad files, the seeded split and batches."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from twolayer_lightning import LitTwoLayerNet, run
from twolayer_lightning.config import ConfigError
from twolayer_lightning.data import DataError, FileRegressionData, load_regression_arrays


def make_xy(n: int = 7, d_in: int = 3, d_out: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=generator), torch.randn(n, d_out, generator=generator)


def write_csv(path: Path, header: list[str], rows) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        # float(): a float32 widened to float64 prints digits that read back to the same float32.
        writer.writerows([[float(v) if isinstance(v, (float, np.floating)) else v for v in row] for row in rows])
    return path


# --- Formats ------------------------------------------------------------------------------------


def two_npy(tmp_path, x, y):
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    return [tmp_path / "x.npy", tmp_path / "y.npy"], {}


def one_npz(tmp_path, x, y):
    np.savez(tmp_path / "xy.npz", x=x.numpy(), y=y.numpy())
    return [tmp_path / "xy.npz"], {}


def two_single_array_npz(tmp_path, x, y):
    np.savez(tmp_path / "x.npz", features=x.numpy())
    np.savez(tmp_path / "y.npz", targets=y.numpy())
    return [tmp_path / "x.npz", tmp_path / "y.npz"], {}


def two_pt_tensors(tmp_path, x, y):
    torch.save(x, tmp_path / "x.pt")
    torch.save(y, tmp_path / "y.pt")
    return [tmp_path / "x.pt", tmp_path / "y.pt"], {}


def one_pt_dict(tmp_path, x, y):
    torch.save({"x": x, "y": y}, tmp_path / "xy.pt")
    return [tmp_path / "xy.pt"], {}


def two_csv(tmp_path, x, y):
    write_csv(tmp_path / "x.csv", ["a", "b", "c"], x.tolist())
    write_csv(tmp_path / "y.csv", ["u", "v"], y.tolist())
    return [tmp_path / "x.csv", tmp_path / "y.csv"], {}


def one_csv_with_targets(tmp_path, x, y):
    # y columns between and after x columns, and asked for in reverse order: y follows target_columns.
    rows = [[r[0], t[1], r[1], r[2], t[0]] for r, t in zip(x.tolist(), y.tolist(), strict=True)]
    write_csv(tmp_path / "data.csv", ["a", "t1", "b", "c", "t0"], rows)
    return [tmp_path / "data.csv"], {"target_columns": ["t0", "t1"]}


@pytest.mark.parametrize(
    "write", [two_npy, one_npz, two_single_array_npz, two_pt_tensors, one_pt_dict, two_csv, one_csv_with_targets]
)
def test_each_format_round_trips(tmp_path, write):
    x, y = make_xy()
    paths, kwargs = write(tmp_path, x, y)
    loaded_x, loaded_y = load_regression_arrays(*paths, **kwargs)
    assert loaded_x.dtype == loaded_y.dtype == torch.float32
    assert torch.equal(loaded_x, x)
    assert torch.equal(loaded_y, y)


def test_1d_float64_and_integer_arrays_become_float32_columns(tmp_path):
    x = np.arange(12, dtype=np.int64).reshape(6, 2)
    y = np.linspace(0.0, 1.0, 6)  # float64, 1-D: one target per row
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    loaded_x, loaded_y = load_regression_arrays(tmp_path / "x.npy", str(tmp_path / "y.npy"))
    assert torch.equal(loaded_x, torch.from_numpy(x).float())
    assert torch.equal(loaded_y, torch.from_numpy(y).float().unsqueeze(1))


def test_a_single_target_column_may_be_given_as_a_string(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["f", "target"], [[1.5, 2.0], [3.0, -4.25], [], [5.0, 6.0]])  # blank line
    x, y = load_regression_arrays(path, target_columns="target")
    assert torch.equal(x, torch.tensor([[1.5], [3.0], [5.0]]))
    assert torch.equal(y, torch.tensor([[2.0], [-4.25], [6.0]]))


# --- Bad files: one DataError, one line, naming the file and the key fact ------------------------


def missing(tmp_path):
    return [tmp_path / "nope.npy"], {}, ["nope.npy", "does not exist"]


def unsupported_suffix(tmp_path):
    (tmp_path / "x.txt").write_text("1 2 3\n")
    return [tmp_path / "x.txt"], {}, ["x.txt", "'.txt'", ".npy, .npz, .pt, .csv"]


def row_counts_differ(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((5, 2)))
    np.save(tmp_path / "y.npy", np.zeros((4, 1)))
    return [tmp_path / "x.npy", tmp_path / "y.npy"], {}, ["x.npy", "y.npy", "5 rows", "4 rows"]


def nan_and_inf_in_npy(tmp_path):
    x = np.ones((6, 3), dtype=np.float32)
    x[2, 1], x[4, 0], x[4, 2] = np.nan, np.inf, -np.inf
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.ones(6))
    return [tmp_path / "x.npy", tmp_path / "y.npy"], {}, ["x.npy", "3 nan or inf", "row 2"]


def float64_beyond_float32(tmp_path):
    np.savez(tmp_path / "xy.npz", x=np.ones((3, 2)), y=np.array([1.0, 1e300, 2.0]))
    return [tmp_path / "xy.npz"], {}, ["xy.npz['y']", "1 nan or inf", "row 1"]


def nan_in_csv(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["a", "y"], [[1, 2], [3, 4], [5, "nan"]])
    return [path], {"target_columns": ["y"]}, ["d.csv", "1 nan or inf", "line 4"]  # the header is line 1


def non_numeric_cell(tmp_path):
    path = write_csv(tmp_path / "x.csv", ["a", "b"], [[1, 2], [3, "abc"]])
    write_csv(tmp_path / "y.csv", ["t"], [[1], [2]])
    return [path, tmp_path / "y.csv"], {}, ["x.csv", "line 3", "'b'", "'abc'"]


def empty_cell(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["a", "t"], [[1, 2], ["", 4]])
    return [path], {"target_columns": "t"}, ["d.csv", "line 3", "'a'", "''"]


def empty_file(tmp_path):
    (tmp_path / "x.csv").write_bytes(b"")
    return [tmp_path / "x.csv", tmp_path / "x.csv"], {}, ["x.csv", "empty", "0 bytes"]


def header_only_csv(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["a", "t"], [])
    return [path], {"target_columns": ["t"]}, ["d.csv", "no data rows"]


def no_rows_npy(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((0, 3)))
    np.save(tmp_path / "y.npy", np.zeros((0, 1)))
    return [tmp_path / "x.npy", tmp_path / "y.npy"], {}, ["x.npy", "(0, 3)", "no rows"]


def csv_without_header(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("1,2\n3,4\n")
    return [path], {"target_columns": ["t"]}, ["d.csv", "'1,2'", "header"]


def unknown_target_column(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["a", "b", "target"], [[1, 2, 3]])
    return [path], {"target_columns": ["targt"]}, ["d.csv", "'targt'", "a, b, target"]


def three_dimensional(tmp_path):
    torch.save({"x": torch.zeros(4, 2, 3), "y": torch.zeros(4)}, tmp_path / "xy.pt")
    return [tmp_path / "xy.pt"], {}, ["xy.pt['x']", "3 dimensions", "(4, 2, 3)"]


def pickled_object(tmp_path):
    np.save(tmp_path / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return [tmp_path / "x.npy", tmp_path / "x.npy"], {}, ["x.npy", "cannot be read"]


def npz_without_x_and_y(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.zeros(3), b=np.zeros(3))
    return [tmp_path / "d.npz"], {}, ["d.npz", "'a', 'b'", "not both 'x' and 'y'"]


@pytest.mark.parametrize(
    "bad",
    [
        missing,
        unsupported_suffix,
        row_counts_differ,
        nan_and_inf_in_npy,
        float64_beyond_float32,
        nan_in_csv,
        non_numeric_cell,
        empty_cell,
        empty_file,
        header_only_csv,
        no_rows_npy,
        csv_without_header,
        unknown_target_column,
        three_dimensional,
        pickled_object,
        npz_without_x_and_y,
    ],
)
def test_a_bad_file_raises_one_clear_data_error(tmp_path, bad):
    paths, kwargs, facts = bad(tmp_path)
    with pytest.raises(DataError) as info:
        load_regression_arrays(*paths, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for fact in facts:
        assert fact in message, f"{fact!r} not in {message!r}"


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)  # callers that catch ValueError for bad input catch it too


# --- FileRegressionData -------------------------------------------------------------------------


def indexed_xy(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x whose first column is the row number, so a batch tells which rows it holds."""
    x = torch.stack(
        [torch.arange(n, dtype=torch.float32), torch.randn(n, generator=torch.Generator().manual_seed(1))], 1
    )
    return x, x[:, :1] * 2 + 1


def test_split_is_seeded_disjoint_and_covers_every_row():
    n, fraction = 50, 0.33  # 16.5 rows: the split rounds up
    x, y = indexed_xy(n)
    first = FileRegressionData(x, y, val_fraction=fraction, seed=3)
    again = FileRegressionData(x, y, val_fraction=fraction, seed=3)
    other = FileRegressionData(x, y, val_fraction=fraction, seed=4)

    assert torch.equal(first.val_indices, again.val_indices)
    assert not torch.equal(first.val_indices, other.val_indices)
    assert len(first.val_indices) == math.ceil(fraction * n)
    assert torch.equal(torch.cat([first.train_indices, first.val_indices]).sort().values, torch.arange(n))
    train_x, train_y = next(iter(first.train_dataloader()))
    assert torch.equal(train_x, x[first.train_indices])
    assert torch.equal(train_y, y[first.train_indices])
    (val_x, val_y), *rest = list(first.val_dataloader())
    assert not rest
    assert torch.equal(val_x, x[first.val_indices])
    assert torch.equal(val_y, y[first.val_indices])


def test_full_batch_mode_yields_the_whole_training_set_every_step():
    x, y = make_xy(n=9)
    data = FileRegressionData(x, y)  # val_fraction=0: every row trains, in file order
    batches = iter(data.train_dataloader())
    for _ in range(3):
        batch_x, batch_y = next(batches)
        assert torch.equal(batch_x, x)
        assert torch.equal(batch_y, y)
    assert data.val_dataloader() == []
    assert (data.num_samples, data.in_features, data.out_features) == (9, 3, 2)


def epochs_of_rows(data: FileRegressionData, epochs: int) -> list[list[int]]:
    """The training rows in the order each epoch serves them (the Trainer sets the epoch the same way)."""
    loader = data.train_dataloader()
    rows = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        rows.append([int(row) for batch_x, _ in loader for row in batch_x[:, 0]])
    return rows


def test_mini_batches_are_shuffled_reproducibly_and_cover_every_training_row_once_per_epoch():
    x, y = indexed_xy(23)
    data = FileRegressionData(x, y, val_fraction=0.2, batch_size=4, seed=5)
    epochs = epochs_of_rows(data, 3)
    train_rows = data.train_indices.tolist()

    assert [len(batch_x) for batch_x, _ in data.train_dataloader()] == [4, 4, 4, 4, 2]  # 18 rows, last is short
    for rows in epochs:
        assert sorted(rows) == train_rows
    assert epochs[0] != epochs[1] != epochs[2]  # reshuffled each epoch
    assert epochs_of_rows(FileRegressionData(x, y, val_fraction=0.2, batch_size=4, seed=5), 3) == epochs
    other_seed = FileRegressionData(x, y, val_fraction=0.2, batch_size=4, seed=6)
    assert epochs_of_rows(other_seed, 1)[0] != epochs[0]
    in_order = FileRegressionData(x, y, val_fraction=0.2, batch_size=4, seed=5, shuffle=False)
    assert epochs_of_rows(in_order, 2) == [train_rows, train_rows]


class BatchRecorder(L.Callback):
    def __init__(self) -> None:
        self.rows: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rows.append([int(row) for row in batch[0][:, 0]])


def test_the_trainer_trains_on_the_batches_each_epoch_gives_however_it_iterates():
    """Lightning iterates the loader its own way; the batches must still be a function of seed and epoch.

    A DataLoader(shuffle=True, generator=...) fails this: the Trainer's second epoch differs from
    iterating the loader by hand, since every iter() draws from the one generator.
    """
    x, y = indexed_xy(23)
    data = FileRegressionData(x, y, val_fraction=0.2, batch_size=4, seed=5)
    recorder = BatchRecorder()
    model = LitTwoLayerNet(2, 3, 1, lr=1e-9)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=15,  # 3 epochs of 5 batches
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
    )
    trainer.fit(model, datamodule=data)
    by_hand = epochs_of_rows(FileRegressionData(x, y, val_fraction=0.2, batch_size=4, seed=5), 3)
    assert [row for batch in recorder.rows for row in batch] == [row for epoch in by_hand for row in epoch]


def test_from_files_reads_the_data_and_passes_the_options(tmp_path):
    x, y = make_xy(n=10)
    torch.save({"x": x, "y": y}, tmp_path / "xy.pt")
    data = FileRegressionData.from_files(tmp_path / "xy.pt", val_fraction=0.5, batch_size=3, seed=2)
    assert torch.equal(data.x, x)
    assert torch.equal(data.y, y)
    assert len(data.val_indices) == 5
    assert data.batch_size == 3


@pytest.mark.parametrize(
    ("kwargs", "fact"),
    [
        ({"val_fraction": -0.1}, "val_fraction=-0.1"),
        ({"val_fraction": 1.0}, "val_fraction=1.0"),
        ({"val_fraction": 0.9}, "leaves no training row"),  # ceil(0.9 * 4) = 4 of 4 rows
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_size": 2.5}, "batch_size=2.5"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs, fact):
    x, y = make_xy(n=4)
    with pytest.raises(ValueError, match=fact):
        FileRegressionData(x, y, **kwargs)


def test_x_and_y_must_be_2d_with_equal_rows():
    x, y = make_xy(n=4)
    with pytest.raises(ValueError, match=r"y of shape \(4,\)"):
        FileRegressionData(x, y[:, 0])
    with pytest.raises(ValueError, match="x has 4 rows but y has 3"):
        FileRegressionData(x, y[:3])


# --- With the Trainer ---------------------------------------------------------------------------


class CountsValidationRows(LitTwoLayerNet):
    """LitTwoLayerNet whose validation step also counts the rows it sees."""

    val_rows = 0

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.val_rows += len(batch[0])
        super().validation_step(batch, batch_idx)


def fast_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        max_steps=5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kwargs,
    )


@pytest.mark.parametrize("batch_size", [None, 4])
def test_short_fit_on_a_file_then_predict_every_row_in_file_order(tmp_path, batch_size):
    x, y = make_xy(n=20, d_in=5, d_out=2)
    names = [f"f{j}" for j in range(5)] + ["t0", "t1"]
    path = write_csv(tmp_path / "train.csv", names, torch.cat([x, y], 1).tolist())
    data = FileRegressionData.from_files(path, target_columns=["t0", "t1"], val_fraction=0.25, batch_size=batch_size)
    model = CountsValidationRows(data.in_features, 8, data.out_features, lr=1e-3)
    # An int val_check_interval: the full-batch loader is endless, so an epoch (the default check) never ends.
    trainer = fast_trainer(val_check_interval=5, check_val_every_n_epoch=None, num_sanity_val_steps=0)

    trainer.fit(model, datamodule=data)

    assert trainer.global_step == 5
    assert len(model.losses) == 5
    assert model.val_rows == len(data.val_indices) == 5  # validated once, at step 5, on every held-out row
    predictions = torch.cat(trainer.predict(model, datamodule=data))
    with torch.no_grad():
        assert torch.equal(predictions, model(x))


def test_without_validation_rows_the_fit_skips_validation():
    x, y = make_xy(n=12)
    data = FileRegressionData(x, y, batch_size=5)
    model = CountsValidationRows(data.in_features, 4, data.out_features, lr=1e-3)
    trainer = fast_trainer()
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 5
    assert model.val_rows == 0


# --- A real data set, held out: scikit-learn's diabetes data, shipped inside the package -------------


def test_loader_reads_sklearn_diabetes_exported_to_csv(tmp_path):
    datasets = pytest.importorskip("sklearn.datasets")
    bunch = datasets.load_diabetes()
    rows = [[*features, target] for features, target in zip(bunch.data.tolist(), bunch.target.tolist(), strict=True)]
    path = write_csv(tmp_path / "diabetes.csv", [*bunch.feature_names, "target"], rows)

    x, y = load_regression_arrays(path, target_columns=["target"])

    assert tuple(x.shape) == bunch.data.shape == (442, 10)
    assert tuple(y.shape) == (442, 1)
    torch.testing.assert_close(x, torch.from_numpy(bunch.data).float(), rtol=0, atol=0)
    torch.testing.assert_close(y, torch.from_numpy(bunch.target).float().unsqueeze(1), rtol=0, atol=0)


def test_training_on_diabetes_predicts_held_out_rows_better_than_their_mean(tmp_path):
    """The whole user path on real data: a CSV, a seeded 20% hold-out, validation R2 above zero.

    The features and the target are standardised first, as a user would for a net without bias
    terms. Measured on a 2-core CPU: val_r2 0.23 after 1000 steps at lr 1e-5 with 20 hidden units.
    """
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_diabetes(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    names = [f"x{i}" for i in range(x.shape[1])]
    path = write_csv(
        tmp_path / "diabetes.csv", [*names, "target"], [[*r, t] for r, t in zip(x.tolist(), y.tolist(), strict=True)]
    )
    metrics = run(
        [
            "data=files",
            f"data.x_path={path}",
            "data.target_columns=[target]",
            "data.val_fraction=0.2",
            "data.standardize=false",  # standardised by hand above, with the seed's init
            "model.init=seed",
            "model.hidden_features=20",
            "optim.lr=1e-5",
            "trainer.max_steps=1000",
            "trainer.val_every_n_steps=250",
        ],
        output_dir=tmp_path / "run",
    )
    assert (metrics["in_features"], metrics["out_features"], metrics["num_samples"]) == (10, 1, 442)
    assert metrics["val_r2"] > 0.1
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
    predicted = run(
        [
            "data=files",
            f"data.x_path={path}",
            "data.target_columns=[target]",
            "data.val_fraction=0.2",
            "mode=predict",
            f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}",
        ],
        output_dir=tmp_path / "predict",
    )
    assert predicted["mode"] == "predict"
    assert np.load(tmp_path / "predict" / "predictions.npy").shape == (442, 1)
    validated = run(
        [
            "data=files",
            f"data.x_path={path}",
            "data.target_columns=[target]",
            "data.val_fraction=0.2",
            "mode=validate",
            f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}",
        ],
        output_dir=tmp_path / "validate",
    )
    with (tmp_path / "run" / "csv" / "metrics.csv").open(newline="") as f:
        logged = [float(row["val_loss"]) for row in csv.DictReader(f) if row["val_loss"]]
    assert len(logged) == 4  # every 250 of 1000 steps
    assert validated["val_loss"] == min(logged)  # best.ckpt is the best validation, recomputed exactly


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_ranks_split_the_single_process_mini_batches(shuffle, world_size):
    """Each rank takes a block of every mini-batch one process would draw: together, the same batches."""
    from types import SimpleNamespace

    x = torch.arange(23.0).unsqueeze(1)  # row i holds i, so a batch names its rows
    single = FileRegressionData(x, x, batch_size=5, shuffle=shuffle, seed=3)
    ranks = []
    for rank in range(world_size):
        data = FileRegressionData(x, x, batch_size=5, shuffle=shuffle, seed=3)
        cpu = SimpleNamespace(root_device=torch.device("cpu"))
        data.trainer = SimpleNamespace(global_rank=rank, world_size=world_size, strategy=cpu)
        ranks.append(data)
    single_loader = single.train_dataloader()
    rank_loaders = [data.train_dataloader() for data in ranks]
    epochs = []
    for epoch in range(2):  # each epoch reshuffles, in step on every rank
        for loader in [single_loader, *rank_loaders]:
            loader.sampler.set_epoch(epoch)  # as the Trainer does on every rank
        expected = [xb.flatten().tolist() for xb, _ in single_loader]
        per_rank = [[xb.flatten().tolist() for xb, _ in loader] for loader in rank_loaders]
        assert all(len(batches) == len(expected) for batches in per_rank)
        merged = [[row for part in parts for row in part] for parts in zip(*per_rank, strict=True)]
        assert merged == expected
        epochs.append(expected)
    assert (epochs[0] != epochs[1]) == shuffle


def test_mini_batch_resume_from_the_end_of_an_epoch_equals_an_uninterrupted_run(tmp_path):
    """Epoch e's batches depend on the seed and e alone, and the checkpoint holds the epoch."""
    x, y = make_xy(n=40, d_in=6, d_out=2, seed=3)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    common = [
        "data=files",
        f"data.x_path={tmp_path / 'x.npy'}",
        f"data.y_path={tmp_path / 'y.npy'}",
        "data.batch_size=8",  # 5 batches per epoch
        "model.hidden_features=5",
        "optim.lr=1e-3",
        "logger=none",
        "trainer.max_steps=30",
    ]
    whole = run([*common, "trainer.checkpoint_every_n_steps=10"], output_dir=tmp_path / "a")
    resumed = run([*common, f"ckpt_path={tmp_path / 'a' / 'checkpoints' / 'step-10.ckpt'}"], output_dir=tmp_path / "b")
    assert resumed["global_step"] == whole["global_step"] == 30
    assert resumed["train_loss"] == whole["train_loss"]
    a = torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- Predictions on a CSV for a model trained on arrays ---------------------------------------------


def train_on_arrays_then_reorder_as_csv(tmp_path: Path) -> tuple[Path, Path, torch.Tensor]:
    """A model trained on .npy (no column names), a CSV of the same x with its columns reversed, and x."""
    x, y = make_xy(n=20, d_in=3, d_out=1)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    arrays = [f"data.x_path={tmp_path / 'x.npy'}", f"data.y_path={tmp_path / 'y.npy'}"]
    run(["data=files", *arrays, "optim.lr=1e-3", "trainer.max_steps=5", "logger=none"], output_dir=tmp_path / "run")
    reordered = write_csv(tmp_path / "new.csv", ["c", "b", "a"], x.flip(1).tolist())
    return tmp_path / "run" / "last.ckpt", reordered, x


def predict(ckpt: Path, x_path: Path, out: Path, *extra: str) -> torch.Tensor:
    run(["data=files", f"data.x_path={x_path}", "mode=predict", f"ckpt_path={ckpt}", *extra], output_dir=out)
    return torch.from_numpy(np.load(out / "predictions.npy"))


def test_a_model_trained_on_arrays_refuses_a_named_csv_rather_than_guess_its_column_order(tmp_path):
    ckpt, reordered, _ = train_on_arrays_then_reorder_as_csv(tmp_path)
    with pytest.raises(DataError, match=r"without column names.*c, b, a.*data\.columns_by_position=true"):
        predict(ckpt, reordered, tmp_path / "predict")
    assert not (tmp_path / "predict" / "predictions.npy").exists()


def test_columns_by_position_takes_a_csv_for_an_array_model_in_file_order(tmp_path):
    ckpt, reordered, x = train_on_arrays_then_reorder_as_csv(tmp_path)
    in_order = write_csv(tmp_path / "same.csv", ["a", "b", "c"], x.tolist())
    model = LitTwoLayerNet.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    with torch.no_grad():
        expected, reversed_columns = model(x), model(x.flip(1))
    assert torch.equal(predict(ckpt, in_order, tmp_path / "p1", "data.columns_by_position=true"), expected)
    # By position means by position: the user asked for it, and the reversed file gets what its order says.
    assert torch.equal(predict(ckpt, reordered, tmp_path / "p2", "data.columns_by_position=true"), reversed_columns)
    assert torch.equal(predict(ckpt, tmp_path / "x.npy", tmp_path / "p3"), expected)  # arrays: as trained


def test_columns_by_position_is_refused_where_nothing_reads_it(tmp_path):
    with pytest.raises(ConfigError, match=r"data.columns_by_position=true is not allowed with mode='train'"):
        run(["data=files", "data.x_path=x.npy", "data.columns_by_position=true"], output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
