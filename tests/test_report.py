"""Pictures of a run's curve and sweeps that summarise themselves, checked on the files real runs write."""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import sys
import threading
from pathlib import Path

import pytest
import yaml

from twolayer_lightning import ConfigError, TrainingDivergedError, report, run
from twolayer_lightning.errors import describe_error
from twolayer_lightning.report import plot_run, summarize_sweep

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib: pip install 'twolayer-lightning[plot]'"
)


def write_job_files(job_dir: Path, num: int, overrides: list[str], log_lines: list[str] = ()) -> None:
    """The files Hydra writes into every job dir of a multirun (and the job's log), before and beside train()."""
    (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
    (job_dir / "train.log").write_text("".join(f"{line}\n" for line in log_lines))


def log_error(message: str) -> str:
    """An ERROR record as cli.sweep_objective logs a failed job in the job's train.log."""
    return f"[2026-01-01 00:00:00,000][ERROR] job failed: {message}"


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory) -> Path:
    """A sweep dir of real runs: two ok, one diverged, one refused config; numbered out of objective order."""
    sweep = tmp_path_factory.mktemp("sweep")
    jobs = [["optim.lr=1e-6"], ["optim.lr=1e-3"], ["optim.lr=2e-6"], ["optim.lr=-1"]]
    for num, overrides in enumerate(jobs):
        overrides = ["trainer.max_steps=20", *overrides]
        log_lines = []
        try:
            run(overrides, output_dir=sweep / str(num))
        except (ConfigError, TrainingDivergedError) as err:
            log_lines.append(log_error(describe_error(err)))
        write_job_files(sweep / str(num), num, overrides, log_lines)
    return sweep


@pytest.fixture
def saved_figures(monkeypatch) -> list:
    """Every matplotlib Figure saved while the test runs, to look at what was drawn."""
    from matplotlib.figure import Figure

    saved = []
    savefig = Figure.savefig

    def spy(self, *args, **kwargs):
        saved.append(self)
        return savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return saved


def assert_png(path: Path) -> None:
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 1000
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] >= 300 and image.shape[1] >= 300
    assert image.min() < image.max()  # something was drawn on the white


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


@needs_matplotlib
@pytest.mark.parametrize("job", ["0", "1"], ids=["ok", "diverged"])
def test_plot_run_draws_the_runs_loss_into_a_png(real_sweep, saved_figures, job):
    run_dir = real_sweep / job
    # Rows of metrics logged at other steps (module's epoch-end metrics) leave train_loss empty.
    losses = [
        (int(r["step"]), float(r["train_loss"])) for r in read_csv(run_dir / "csv" / "metrics.csv") if r["train_loss"]
    ]
    finite = [(step, loss) for step, loss in losses if math.isfinite(loss)]
    assert len(finite) >= 2
    metrics = json.loads((run_dir / "metrics.json").read_text())

    assert plot_run(run_dir) == run_dir / "loss.png"

    assert_png(run_dir / "loss.png")
    (axes,) = saved_figures[-1].axes
    assert axes.get_yscale() == "log"
    (line,) = [line for line in axes.get_lines() if line.get_label() == "train_loss"]
    assert list(zip(line.get_xdata(), line.get_ydata(), strict=True)) == finite  # inf cannot sit on a log axis
    assert f"lr={metrics['lr']:g}" in axes.get_title() and metrics["status"] in axes.get_title()
    # The log axis names its decades (10⁻⁴, 10², ...) in plain text, each label the power of ten it stands at.
    labelled = [
        (tick, label.get_text())
        for tick, label in zip(axes.get_yticks(), axes.get_yticklabels(), strict=True)
        if label.get_text()
    ]
    assert len(labelled) >= 2
    assert all(text == "10" + str(round(math.log10(tick))).translate(SUPERSCRIPTS) for tick, text in labelled)


@needs_matplotlib
def test_a_reused_figure_draws_each_run_as_a_new_one_would(real_sweep, tmp_path, monkeypatch):
    # plot_run draws every run of a thread on one figure (a sweep's jobs): no trace of the run before may stay.
    empty = tmp_path / "empty"  # no loss logged yet: matplotlib's default limits
    (empty / "csv").mkdir(parents=True)
    (empty / "csv" / "metrics.csv").write_text("epoch,step,train_loss\n")
    runs = [real_sweep / "1", real_sweep / "0", empty, real_sweep / "2", real_sweep / "1"]
    alone = {}
    for run_dir in runs:
        monkeypatch.setattr(report, "_loss_figures", threading.local())  # a new figure for each
        plot_run(run_dir)
        alone[run_dir] = (run_dir / "loss.png").read_bytes()
    monkeypatch.setattr(report, "_loss_figures", threading.local())
    for run_dir in runs:
        plot_run(run_dir)
        assert (run_dir / "loss.png").read_bytes() == alone[run_dir], run_dir


@needs_matplotlib
def test_plot_run_reads_sparse_columns_and_draws_val_loss(tmp_path, saved_figures):
    # As CSVLogger writes metrics logged at different steps: the union of columns, empty cells elsewhere.
    rows = [{"epoch": 0, "step": step, "train_loss": 10.0 / (step + 1), "val_loss": ""} for step in range(12)]
    for row in rows[4::4]:
        row["val_loss"] = 20.0 / (row["step"] + 1)
    (tmp_path / "csv").mkdir()
    with (tmp_path / "csv" / "metrics.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["epoch", "step", "train_loss", "val_loss"])
        writer.writeheader()
        writer.writerows(rows)

    plot_run(tmp_path)

    assert_png(tmp_path / "loss.png")
    lines = {line.get_label(): line for line in saved_figures[-1].axes[0].get_lines()}
    assert list(lines["val_loss"].get_xdata()) == [row["step"] for row in rows if row["val_loss"] != ""]
    assert list(lines["train_loss"].get_xdata()) == [row["step"] for row in rows]
    assert saved_figures[-1].axes[0].get_title() == tmp_path.name  # no metrics.json: the dir names the plot


def test_plot_run_names_a_missing_or_broken_csv(tmp_path):
    with pytest.raises(FileNotFoundError, match="logger=csv"):
        plot_run(tmp_path)
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text("step,train_loss\n0,1.5\n1,oops\n")
    with pytest.raises(ValueError, match=r"line 3: .*train_loss='oops' is not a number"):
        plot_run(tmp_path)
    (tmp_path / "csv" / "metrics.csv").write_text("step,loss\n0,1.5\n")
    with pytest.raises(ValueError, match="no train_loss column"):
        plot_run(tmp_path)


def test_without_matplotlib_runs_and_sweeps_lose_only_their_pictures(real_sweep, tmp_path, monkeypatch, caplog):
    sweep = tmp_path / "sweep"
    for job in ("0", "3"):
        (sweep / job).mkdir(parents=True)
        for path in (real_sweep / job).rglob("*"):
            if path.is_file() and path.suffix not in (".ckpt", ".png"):  # a copy as training left it
                (sweep / job / path.relative_to(real_sweep / job)).parent.mkdir(parents=True, exist_ok=True)
                (sweep / job / path.relative_to(real_sweep / job)).write_bytes(path.read_bytes())
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import matplotlib...` raise ImportError
    monkeypatch.setattr(report, "_loss_figures", threading.local())  # nor the figure an earlier test drew

    with caplog.at_level(logging.WARNING, logger="twolayer_lightning.report"):
        assert plot_run(sweep / "0") is None
        rows = summarize_sweep(sweep)

    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("pip install 'twolayer-lightning[plot]'" in w for w in warnings)
    assert not (sweep / "0" / "loss.png").exists() and not (sweep / "curves.png").exists()
    assert [row["status"] for row in rows] == ["ok", "failed"]
    assert (sweep / "summary.csv").is_file() and "curves.png" not in (sweep / "summary.md").read_text()


@needs_matplotlib
def test_summarize_sweep_ranks_real_runs_and_explains_the_failures(real_sweep, saved_figures):
    metrics = {
        job.name: json.loads((job / "metrics.json").read_text())
        for job in real_sweep.iterdir()
        if (job / "metrics.json").is_file()
    }
    ok = sorted((m["train_loss"], job) for job, m in metrics.items() if m["status"] == "ok")
    diverged = [job for job, m in metrics.items() if m["status"] == "diverged"]
    failed = [job.name for job in real_sweep.iterdir() if job.is_dir() and job.name not in metrics]
    assert len(ok) == 2 and len(diverged) == 1 and len(failed) == 1  # the fixture made one of each kind

    rows = summarize_sweep(real_sweep)

    assert [row["dir"] for row in rows] == [job for _, job in ok] + diverged + failed
    assert [row["status"] for row in rows] == ["ok", "ok", "diverged", "failed"]
    for row in rows:
        overrides = yaml.safe_load((real_sweep / row["dir"] / ".hydra" / "overrides.yaml").read_text())
        assert row["overrides"] == " ".join(overrides)
        assert row["job"] == int(row["dir"])
        assert row["val_loss"] is None
        if row["dir"] in metrics:
            recorded = metrics[row["dir"]]
            # Strict JSON: an inf loss is null in metrics.json and named under non_finite.
            loss = (
                recorded["train_loss"]
                if recorded["train_loss"] is not None
                else float(recorded["non_finite"]["train_loss"])
            )
            assert row["train_loss"] == loss
            assert row["global_step"] == metrics[row["dir"]]["global_step"]
    assert rows[0]["error"] == rows[1]["error"] == ""
    assert "training diverged: the loss became inf" in rows[2]["error"]
    assert rows[3]["error"].startswith("optim.lr=-1.0 is not allowed")

    table = read_csv(real_sweep / "summary.csv")
    assert [r["dir"] for r in table] == [row["dir"] for row in rows]
    assert "val_loss" not in table[0]  # no job validated
    assert [float(r["train_loss"]) for r in table[:3]] == [row["train_loss"] for row in rows[:3]]  # inf included

    markdown = [line for line in (real_sweep / "summary.md").read_text().splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in markdown[0].strip("|").split("|")]
    assert header == ["job", "overrides", "status", "train_loss", "global_step", "fit_seconds", "error"]
    assert set(markdown[1]) <= set("|-: ") and markdown[1].count("|") == len(header) + 1
    assert len(markdown) == 2 + len(rows)
    assert [line.split("|")[1].strip() for line in markdown[2:]] == [str(row["job"]) for row in rows]

    assert_png(real_sweep / "curves.png")
    axes = saved_figures[-1].axes[0]
    labels = [line.get_label() for line in axes.get_lines()]
    # One curve per ok job, told apart by what differs; the shared trainer.max_steps=20 is in the title.
    assert labels == [f"{row['job']}: {row['overrides'].split()[-1]}" for row in rows[:2]]
    assert "trainer.max_steps=20" in axes.get_title()


def test_summarize_sweep_prefers_val_loss_and_survives_broken_job_dirs(tmp_path):
    def job(num: int, train_loss: float, csv_text: str | None, val_loss: float | None = None) -> None:
        write_job_files(tmp_path / str(num), num, [f"seed={num}"])
        metrics = {"status": "ok", "train_loss": train_loss, "global_step": 3, "fit_seconds": 0.1}
        if val_loss is not None:
            metrics["val_loss"] = val_loss
        (tmp_path / str(num) / "metrics.json").write_text(json.dumps(metrics))
        if csv_text is not None:
            (tmp_path / str(num) / "csv").mkdir()
            (tmp_path / str(num) / "csv" / "metrics.csv").write_text(csv_text)

    job(0, 1.0, None, val_loss=5.0)  # best train loss, worse val loss
    job(1, 2.0, "step,train_loss,val_loss\n0,4.0,\n1,3.0,4.5\n2,2.0,\n")  # val_loss only in the csv: 4.5
    job(2, 0.5, "step,train_loss\n0,1.0\n1,\x00\x00garbage")  # the best train loss, but a broken csv
    job(3, 0.1, None)
    (tmp_path / "3" / "metrics.json").write_text('{"status": "ok", "train_lo')  # cut off mid-write

    rows = summarize_sweep(tmp_path)

    assert [(row["job"], row["status"], row["val_loss"]) for row in rows] == [
        (1, "ok", 4.5),
        (0, "ok", 5.0),
        (2, "ok", None),  # no val_loss: cannot be ranked against the others
        (3, "failed", None),
    ]
    assert rows[2]["error"].startswith("csv/metrics.csv: ")
    assert "metrics.json: " in rows[3]["error"]
    assert read_csv(tmp_path / "summary.csv")[0]["val_loss"] == "4.5"
    assert "| val_loss |" in (tmp_path / "summary.md").read_text()


def test_summary_has_val_r2_with_validation_data_and_reads_strict_json_nulls(tmp_path):
    write_job_files(tmp_path / "0", 0, ["seed=0"])
    (tmp_path / "0" / "metrics.json").write_text(
        json.dumps({"status": "ok", "train_loss": 1.0, "val_loss": 2.0, "val_r2": 0.75, "global_step": 3})
    )
    write_job_files(tmp_path / "1", 1, ["seed=1"], [log_error("training diverged")])
    (tmp_path / "1" / "metrics.json").write_text(
        json.dumps({"status": "diverged", "train_loss": None, "non_finite": {"train_loss": "inf"}, "global_step": 2})
    )

    rows = summarize_sweep(tmp_path)

    assert [(row["val_r2"], row["train_loss"]) for row in rows] == [(0.75, 1.0), (None, math.inf)]
    assert [r["val_r2"] for r in read_csv(tmp_path / "summary.csv")] == ["0.75", ""]
    assert "| val_r2 |" in (tmp_path / "summary.md").read_text()


@pytest.mark.slow
def test_sweep_summary_callback_summarises_a_real_multirun(tmp_path, train_py):
    # No callback override: conf/config.yaml registers SweepSummary for every sweep.
    result = train_py("-m", "trainer.max_steps=20", "optim.lr=1e-6,1e-3", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr

    table = read_csv(tmp_path / "summary.csv")
    assert [(row["overrides"].split()[-1], row["status"]) for row in table] == [
        ("optim.lr=1e-06", "ok"),
        ("optim.lr=0.001", "diverged"),
    ]
    assert table[0]["train_loss"] == repr(
        json.loads((tmp_path / table[0]["dir"] / "metrics.json").read_text())["train_loss"]
    )
    assert (tmp_path / "summary.md").is_file()
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "curves.png").read_bytes().startswith(PNG_SIGNATURE)
    # The summary's line goes to the console (Hydra's launcher restores its own logging after each
    # job), not into the log of the job that happened to run last.
    assert "best first by train_loss" in result.stdout + result.stderr
    assert not any("best first" in log.read_text() for log in tmp_path.glob("*/train.log"))
