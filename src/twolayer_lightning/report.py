"""Pictures and tables of finished runs: one run's loss curve, and a sweep that summarises itself.

:func:`plot_run` draws a run's ``csv/metrics.csv`` into ``loss.png``. :func:`summarize_sweep` writes
``summary.csv``, ``summary.md`` and ``curves.png`` at the root of a multirun, one row per job, best
first; the Hydra callback :class:`SweepSummary` calls it when a multirun ends (conf/config.yaml
registers it under ``hydra.callbacks.summary``, so every ``python train.py -m ...`` summarises itself).

matplotlib is optional (``pip install 'twolayer-lightning[plot]'``): without it no PNG is drawn, one
warning line says so, and everything else is written as usual.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"  # what cli.train writes at the end of a run
CSV_FILE = Path("csv", "metrics.csv")  # what Lightning's CSVLogger writes with logger=csv
LOSS_COLUMNS = ("train_loss", "val_loss")
# Every summary row has these keys; "dir" is the job dir relative to the sweep root.
SUMMARY_COLUMNS = (
    "job",
    "overrides",
    "status",
    "train_loss",
    "val_loss",
    "val_r2",
    "global_step",
    "fit_seconds",
    "error",
    "dir",
)
VALIDATION_COLUMNS = ("val_loss", "val_r2")  # in the summary only when some job has validation data
# The exit status of a sweep that ran and in which no job ended ok: not 2 (a mistake refused before anything
# ran) nor 130/143 (a signal), so that a script or a scheduler can tell the three apart.
NO_OK_JOB_EXIT = 1

Curves = dict[str, tuple[list[int], list[float]]]  # metric -> (steps, values)


def _read_losses(path: Path) -> Curves:
    """The per-step ``train_loss`` (and ``val_loss``, if a column) of a CSVLogger file; other columns are ignored.

    CSVLogger writes one row per logged step with the union of all metric names as columns, so a
    metric logged at other steps than the rest leaves empty cells: those are skipped, not errors.

    Raises:
        ValueError: no ``step`` or ``train_loss`` column, a cell that is not a number (naming its
            line), or not a text CSV file at all. The message does not name the file.
    """
    try:
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            columns = reader.fieldnames or []
            missing = [name for name in ("step", "train_loss") if name not in columns]
            if missing:
                raise ValueError(
                    f"no {' or '.join(missing)} column (the header is {','.join(columns) or 'empty'}); "
                    "expected the step,train_loss,... file of Lightning's CSVLogger"
                )
            curves: Curves = {name: ([], []) for name in LOSS_COLUMNS if name in columns}
            for row in reader:
                for name, (steps, values) in curves.items():
                    cell = row[name]
                    if cell is None or cell == "":  # None: a row shorter than the header
                        continue
                    try:
                        steps.append(int(float(row["step"])))
                        values.append(float(cell))
                    except (TypeError, ValueError):
                        raise ValueError(
                            f"line {reader.line_num}: step={row['step']!r}, {name}={cell!r} is not a number"
                        ) from None
    except (csv.Error, UnicodeDecodeError) as err:
        raise ValueError(f"not a CSV text file ({err})") from None
    return curves


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's ``metrics.json`` (whose inf and nan losses are JSON's Infinity and NaN).

    Raises:
        OSError: it cannot be read (FileNotFoundError: the run has none).
        ValueError: it is not a JSON object.
    """
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    if not isinstance(metrics, dict):
        raise ValueError(f"holds a {type(metrics).__name__}, not a JSON object")
    return metrics


def _number(value: Any) -> float | None:
    """A float for an int or float from a JSON file, None for anything else (bools included)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _figure(what: str, fixed_margins: bool = False) -> Figure | None:
    """A figure that draws with Agg, or None (and one warning line) when matplotlib is missing.

    ``fixed_margins``: room for one axes with its labels and a two-line title, set once, instead
    of the constrained layout, which measures every label by drawing the figure twice (about a
    third of a run's loss.png). For figures whose legend may sit outside the axes, leave it False.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed, so no %s: pip install 'twolayer-lightning[plot]'", what)
        return None
    figure = Figure(figsize=(8, 5), dpi=100, layout=None if fixed_margins else "constrained")
    if fixed_margins:
        figure.subplots_adjust(left=0.11, right=0.97, bottom=0.1, top=0.88)
    # A bare Figure on an Agg canvas, not pyplot: no window, no global backend switched under a
    # notebook's feet, and nothing left open in pyplot's figure registry after a thousand runs.
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> None:
    """Write ``figure`` as a PNG, quickly: unhinted glyphs and zlib level 1 take a fraction of the
    defaults' time for a picture that looks the same (a few KB larger)."""
    import matplotlib

    with matplotlib.rc_context({"text.hinting": "no_hinting"}):
        figure.savefig(path, pil_kwargs={"compress_level": 1})


def _plot_loss(axes: Axes, steps: list[int], values: list[float], **kwargs: Any) -> None:
    """Plot the finite, positive points: a log axis has no place for 0, inf or nan."""
    points = [(step, value) for step, value in zip(steps, values, strict=True) if math.isfinite(value) and value > 0]
    axes.plot([step for step, _ in points], [value for _, value in points], **kwargs)


_SUPERSCRIPTS = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


def _power_of_ten(value: float, _position: int) -> str:
    """``10⁴`` as plain text for a major tick of a log axis (those sit at powers of ten).

    matplotlib's own ``10^4`` labels go through its TeX parser for every label of every new figure,
    which was most of the time a run's loss.png took (benchmarks/README.md has the figures).
    """
    return "10" + str(round(math.log10(value))).translate(_SUPERSCRIPTS)


def _style_loss_axes(axes: Axes) -> None:
    from matplotlib.ticker import FuncFormatter, LogFormatter

    # Losses span from ~1e7 at step 0 to ~1e-5 after 500 steps: only a log axis shows both ends.
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(FuncFormatter(_power_of_ten))
    # Between powers of ten: labelled (2e-01, ...) only when the curve spans about a decade or less.
    axes.yaxis.set_minor_formatter(LogFormatter(base=10, labelOnlyBase=False))
    axes.set_xlabel("step")
    axes.xaxis.get_major_locator().set_params(integer=True)  # steps are whole: no tick at step 2.5
    axes.set_ylabel("loss (sum of squared errors)")
    axes.grid(True, which="major", alpha=0.4)
    axes.grid(True, which="minor", alpha=0.1)


def _run_title(run_dir: Path) -> str:
    """Two lines of facts from ``metrics.json``, or the run dir's name when it has none."""
    try:
        metrics = _read_metrics(run_dir)
    except (OSError, ValueError):
        return run_dir.name
    first = [f"{metrics.get('status', '?')}"]
    if (lr := _number(metrics.get("lr"))) is not None:
        first.append(f"lr={lr:g}")
    if "seed" in metrics:
        first.append(f"seed={metrics['seed']}")
    if "global_step" in metrics:
        first.append(f"{metrics['global_step']} steps")
    if (loss := _number(metrics.get("train_loss"))) is not None:
        first.append(f"final train_loss={loss:.4g}")
    sizes = ("num_samples", "N"), ("in_features", "D_in"), ("hidden_features", "H"), ("out_features", "D_out")
    second = [" ".join(f"{short}={metrics[key]}" for key, short in sizes if key in metrics)]
    if "accelerator" in metrics:
        second.append(str(metrics["accelerator"]))
    if (seconds := _number(metrics.get("fit_seconds"))) is not None:
        second.append(f"fit {seconds:.2f} s")
    return " · ".join(first) + "\n" + " · ".join(part for part in second if part)


def plot_run(run_dir: str | os.PathLike[str]) -> Path | None:
    """Draw a run's loss against step, on a log axis, into ``run_dir/loss.png``.

    The train loss, and the validation loss when the csv has a ``val_loss`` column with values;
    a dotted line marks the step where a diverged run's loss became inf or nan. The title gives
    the facts of ``metrics.json`` (status, lr, seed, steps, final loss, sizes, device, time).

    Args:
        run_dir: the ``output_dir`` of a run trained with ``logger=csv``.

    Returns:
        The PNG's path, or None when matplotlib is not installed: then one warning line says so
        and nothing is drawn, so that a run or sweep never fails for want of a picture.

    Raises:
        FileNotFoundError: the run has no ``csv/metrics.csv`` (it used another logger or none).
        ValueError: the csv is not Lightning's CSVLogger file; the message names the line.
    """
    run_dir = Path(run_dir)
    path = run_dir / CSV_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: plot_run draws the per-step losses that a run with logger=csv writes there"
        )
    try:
        curves = _read_losses(path)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    # Without a point to draw, the limits are matplotlib's defaults for empty axes: a new figure has them.
    drawn = any(math.isfinite(value) and value > 0 for _, values in curves.values() for value in values)
    axes = _loss_axes(f"{run_dir / 'loss.png'}", reuse=drawn)
    if axes is None:
        return None
    for name, (steps, values) in curves.items():
        if values:
            _plot_loss(axes, steps, values, label=name, marker="." if len(values) < 50 else None)
        bad = next(((step, value) for step, value in zip(steps, values, strict=True) if not math.isfinite(value)), None)
        if bad is not None:
            axes.axvline(bad[0], color="red", linestyle=":", label=f"{name} became {bad[1]} at step {bad[0]}")
    if drawn:
        axes.relim()  # the limits of this run's lines only (the figure may have drawn another run's before)
        axes.autoscale_view()
    axes.legend()
    # y given: the title sits right above the axes, without measuring the axes' labels to place it.
    axes.set_title(_run_title(run_dir), fontsize="medium", y=1.0)
    out = run_dir / "loss.png"
    _save(axes.figure, out)
    return out


# One loss figure per thread, drawn again for each run: a sweep's jobs in one process (stacked members,
# or Hydra's basic launcher) reuse its axes, ticks and text instead of building them, about a third of a
# loss.png's time. Per thread, because a matplotlib figure must not be drawn from two threads at once.
_loss_figures = threading.local()


def _loss_axes(what: str, reuse: bool) -> Axes | None:
    """The thread's loss axes, emptied of the previous run's lines and legend (new ones unless ``reuse``);
    None without matplotlib."""
    axes = getattr(_loss_figures, "axes", None) if reuse else None
    if axes is None:
        figure = _figure(what, fixed_margins=True)
        if figure is None:
            return None
        axes = _loss_figures.axes = figure.subplots()
        _style_loss_axes(axes)
        return axes
    for line in list(axes.lines):
        line.remove()
    if (legend := axes.get_legend()) is not None:
        legend.remove()
    axes.set_prop_cycle(None)  # the first line blue again, as on a new figure
    return axes


def _overrides(job_dir: Path) -> str:
    """The job's overrides as Hydra prints them, ``key=value`` joined by spaces.

    Raises:
        OSError, yaml.YAMLError: ``.hydra/overrides.yaml`` cannot be read.
    """
    overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
    return " ".join(str(override) for override in overrides or [])


def _job_number(job_dir: Path, sweep_dir: Path) -> int | str:
    """Hydra's ``hydra.job.num``; the job dir's name is that number too unless ``hydra.sweep.subdir`` was changed."""
    try:
        hydra_cfg = yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())
        return int(hydra_cfg["hydra"]["job"]["num"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        name = job_dir.relative_to(sweep_dir).as_posix()
        return int(name) if name.isdigit() else name


def _last_error(job_dir: Path) -> str:
    """The last ERROR record of the job's log (Hydra's ``<job name>.log``), as one line.

    An ERROR record is a line with ``[ERROR]``, as Hydra's log formats write the level; the lines
    after it that do not open with ``[`` (each record of those formats does) belong to it too,
    e.g. one line per problem of a config error, and are joined to it.
    """
    record: list[str] = []
    for log_file in sorted(job_dir.glob("*.log")):
        try:
            lines = log_file.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for i, line in enumerate(lines):
            if match := re.search(r"\[ERROR\]\s*(?:-\s*)?(.*)", line):
                record = [match.group(1)]
                for rest in lines[i + 1 : i + 11]:  # enough for a config error's problems, not a traceback
                    if rest.startswith("["):
                        break
                    record.append(rest.strip())
    # "job failed: error: ..." is how cli.sweep_objective logs it; the status column already says that much.
    parts = [re.sub(r"^(?:job (?:failed|interrupted):\s*)?(?:error:\s*)?", "", part) for part in record]
    return "; ".join(part for part in parts if part)


def _summarize_job(job_dir: Path, sweep_dir: Path) -> tuple[dict[str, Any], tuple[list[int], list[float]] | None]:
    """One summary row (see ``SUMMARY_COLUMNS``) and the train-loss curve, if the job has one.

    Whatever is missing or broken in the job dir becomes the row's ``error``, never an exception:
    one bad job must not cost the summary of the others.
    """
    row: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
    row.update(
        job=_job_number(job_dir, sweep_dir),
        dir=job_dir.relative_to(sweep_dir).as_posix() or ".",
        status="failed",  # until a metrics.json says otherwise: the job ended before train() did
        overrides="",
    )
    problems = []
    try:
        row["overrides"] = _overrides(job_dir)
    except (OSError, yaml.YAMLError) as err:
        problems.append(f".hydra/overrides.yaml: {err}")
    try:
        metrics = _read_metrics(job_dir)
    except FileNotFoundError:
        pass  # status "failed" says as much; the error is the log's, or the note below
    except (OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        problems.append(f"metrics.json: {err}")
    else:
        row["status"] = str(metrics.get("status", "ok"))
        # metrics.json is strict JSON: an inf or nan is null there, its value named under "non_finite".
        non_finite = metrics.get("non_finite") if isinstance(metrics.get("non_finite"), dict) else {}
        for key in ("train_loss", "val_loss", "val_r2", "fit_seconds"):
            value = metrics.get(key)
            if value is None and str(non_finite.get(key)) in ("inf", "-inf", "nan"):
                value = float(non_finite[key])
            row[key] = _number(value)
        step = metrics.get("global_step")
        row["global_step"] = step if isinstance(step, int) and not isinstance(step, bool) else None
    curve = None
    if (job_dir / CSV_FILE).is_file():
        try:
            curves = _read_losses(job_dir / CSV_FILE)
        except (OSError, ValueError) as err:
            problems.append(f"{CSV_FILE.as_posix()}: {err}")
        else:
            curve = curves["train_loss"]
            if row["val_loss"] is None and curves.get("val_loss", ([], []))[1]:
                row["val_loss"] = curves["val_loss"][1][-1]  # the last validation, as at the end of the run
    if row["status"] != "ok":
        problems.insert(0, _last_error(job_dir) or "no ERROR line in the job's *.log")
    row["error"] = "; ".join(problems)
    return row, curve


def _sort_key(row: dict[str, Any], objective: str) -> tuple[Any, ...]:
    """Finite objectives of ok jobs first, ascending; then diverged or non-finite; then failed."""
    value = row[objective]
    finite = row["status"] == "ok" and value is not None and math.isfinite(value)
    rank = 0 if finite else 2 if row["status"] == "failed" else 1
    job = row["job"]
    return rank, value if finite else 0.0, (0, job, "") if isinstance(job, int) else (1, 0, str(job))


def _csv_cell(value: Any) -> str:
    # repr keeps a float's every digit, and float() reads "inf" and "nan" back.
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def _md_cell(value: Any, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}" if column == "fit_seconds" else f"{value:.4g}"
    return str(value).replace("|", r"\|")  # a bare | would end the cell


def _write_markdown(path: Path, rows: list[dict[str, Any]], columns: Sequence[str], intro: str, image: bool) -> None:
    lines = [f"# Sweep summary: {path.parent}", "", intro, ""]
    lines.append("| " + " | ".join(columns) + " |")
    # Right-aligned, as numbers read best.
    numeric = {"job", "train_loss", "val_loss", "val_r2", "global_step", "fit_seconds"}
    lines.append("|" + "|".join("---:" if column in numeric else "---" for column in columns) + "|")
    lines += ["| " + " | ".join(_md_cell(row[column], column) for column in columns) + " |" for row in rows]
    if image:
        lines += ["", "![train loss of each ok job against step](curves.png)"]
    _write_whole(path, "\n".join(lines) + "\n")


def _write_whole(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary file renamed into place: a full disk leaves no half file."""
    temp = path.with_name(f".{path.name}.tmp")
    try:
        with temp.open("w", newline="") as file:
            file.write(text)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _plot_curves(path: Path, rows: list[dict[str, Any]], curves: dict[str, tuple[list[int], list[float]]]) -> bool:
    """Overlay the train loss of each ok job into ``path``; False when nothing was drawn."""
    drawn = [row for row in rows if row["status"] == "ok" and curves.get(row["dir"])]
    if not drawn:
        path.unlink(missing_ok=True)  # a curves.png of an earlier summary would now mislead
        log.info("no curves.png: no ok job has a %s", CSV_FILE.as_posix())
        return False
    figure = _figure(str(path))
    if figure is None:
        return False
    # The legend shows what tells the jobs apart; the overrides they all share go to the title.
    split = [row["overrides"].split() for row in drawn]
    shared = [override for override in split[0] if all(override in other for other in split[1:])]
    axes = figure.subplots()
    for row, overrides in zip(drawn, split, strict=True):
        label = " ".join(override for override in overrides if override not in shared) or row["overrides"]
        _plot_loss(axes, *curves[row["dir"]], label=f"{row['job']}: {label}" if label else str(row["job"]))
    _style_loss_axes(axes)
    # Beyond a dozen jobs the legend would cover the curves: put it beside the axes instead.
    outside = {"loc": "upper left", "bbox_to_anchor": (1.01, 1)} if len(drawn) > 12 else {}
    axes.legend(fontsize="small", **outside)
    title = f"train loss of the ok jobs ({len(drawn)} of {len(rows)})"
    axes.set_title(title + (f"\nall with {' '.join(shared)}" if shared and len(drawn) > 1 else ""), fontsize="medium")
    _save(figure, path)
    return True


def _status_counts(rows: list[dict[str, Any]]) -> str:
    """``"2 ok, 1 diverged, 0 failed"``, and the interrupted jobs of a sweep stopped by SIGTERM or Ctrl-C."""
    counts = {status: sum(row["status"] == status for row in rows) for status in ("ok", "diverged", "failed")}
    if any(row["status"] == "interrupted" for row in rows):
        counts["interrupted"] = sum(row["status"] == "interrupted" for row in rows)
    return ", ".join(f"{count} {status}" for status, count in counts.items())


def summarize_sweep(sweep_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Summarise a multirun's jobs into ``summary.csv``, ``summary.md`` and ``curves.png`` at its root.

    A job dir is any folder under ``sweep_dir`` that holds ``.hydra/overrides.yaml``. Each row has
    the job's number, its overrides (``key=value`` joined by spaces), its status (``ok``,
    ``diverged``, ``interrupted`` (stopped by SIGTERM or Ctrl-C; the sweep launched nothing after it), or
    ``failed`` when it has no readable ``metrics.json``), ``train_loss``,
    ``val_loss`` (from ``metrics.json``, else the last value in its csv; None without one),
    ``val_r2`` (from ``metrics.json``), ``global_step``, ``fit_seconds``, ``error`` (for a job
    that is not ok, the last ERROR line of its log; and whatever in the dir could not be read,
    e.g. a broken csv) and ``dir`` (the job dir relative to ``sweep_dir``). Rows are sorted by the
    objective, ascending: ``val_loss`` when any job has one, else ``train_loss``; jobs whose
    objective is not finite come last, failed ones after diverged ones. The ``val_loss`` and
    ``val_r2`` columns are left out of the files when no job has a ``val_loss``.

    Args:
        sweep_dir: the sweep root, ``hydra.sweep.dir`` (``multirun/<date>/<time>`` by default).

    Returns:
        The rows, best first.

    Raises:
        NotADirectoryError: ``sweep_dir`` is not a folder.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise NotADirectoryError(f"sweep_dir={str(sweep_dir)!r} is not a folder: pass a multirun's hydra.sweep.dir")
    rows, curves = [], {}
    for overrides_file in sorted(sweep_dir.glob("**/.hydra/overrides.yaml")):
        row, curve = _summarize_job(overrides_file.parent.parent, sweep_dir)
        rows.append(row)
        curves[row["dir"]] = curve
    objective = "val_loss" if any(row["val_loss"] is not None for row in rows) else "train_loss"
    rows.sort(key=lambda row: _sort_key(row, objective))
    columns = [column for column in SUMMARY_COLUMNS if column not in VALIDATION_COLUMNS or objective == "val_loss"]

    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(columns)
    writer.writerows([_csv_cell(row[column]) for column in columns] for row in rows)
    _write_whole(sweep_dir / "summary.csv", table.getvalue())
    intro = f"{len(rows)} jobs, best first by {objective} (diverged and failed jobs last): {_status_counts(rows)}."
    image = _plot_curves(sweep_dir / "curves.png", rows, curves)
    _write_markdown(sweep_dir / "summary.md", rows, [column for column in columns if column != "dir"], intro, image)
    # Only an ok job is a "best": when every job diverged or failed, the first row is merely the least bad.
    ok = rows and rows[0]["status"] == "ok"
    best = f"; best: job {rows[0]['job']} ({rows[0]['overrides']}), {objective}={rows[0][objective]!r}" if ok else ""
    log.info("%s%s; files in %s", intro.rstrip("."), best, sweep_dir)
    return rows


# The sweeps SweepSummary summarised since the command line last asked (exit_if_no_job_ok): their dirs and rows.
# Module state, because Hydra hands a callback's outcome to no one and returns nothing from a multirun.
_summarised: list[tuple[Path, list[dict[str, Any]] | OSError]] = []


class SweepSummary(Callback):
    """Hydra callback: when a multirun ends, :func:`summarize_sweep` its sweep dir.

    Turn it on for one sweep with
    ``+hydra.callbacks.summary._target_=twolayer_lightning.report.SweepSummary``, or for every
    sweep under ``hydra.callbacks`` in ``config.yaml``. Hydra calls it only when every job has
    returned: a job that raised (rather than logging its failure, as ``train.py``'s jobs do for a
    bad value or a diverging loss) ends the sweep before it; call :func:`summarize_sweep` then.
    The rows are kept for :func:`exit_if_no_job_ok`.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _summarised.clear()  # a new sweep: an earlier one's outcome is not this one's

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write ``summary.csv``, ``summary.md`` and ``curves.png`` into ``config.hydra.sweep.dir``."""
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            _summarised.append((sweep_dir, summarize_sweep(sweep_dir)))
        except OSError as err:  # a full disk, say: the command line's exit says so (exit_if_no_job_ok)
            _summarised.append((sweep_dir, err))


def exit_if_no_job_ok() -> None:
    """End the process with :data:`NO_OK_JOB_EXIT` and one line on stderr when the sweep that
    :class:`SweepSummary` summarised last had no job that ended ok (every job failed or diverged);
    return otherwise, also when no sweep was summarised (a single run). Either way that sweep is
    forgotten. The command line calls this after Hydra returns, when the summary is written.

    Raises:
        SystemExit: with :data:`NO_OK_JOB_EXIT`.
    """
    if not _summarised:
        return
    sweep_dir, rows = _summarised[-1]
    _summarised.clear()
    if isinstance(rows, OSError):
        print(
            f"error: the sweep's summary could not be written in {sweep_dir} ({rows.strerror}: {rows.filename}); "
            "each job's own files are in its folder: free some space and run summarize_sweep on it",
            file=sys.stderr,
        )
        raise SystemExit(NO_OK_JOB_EXIT)
    if any(row["status"] == "ok" for row in rows):
        return
    print(
        f"error: no job of the sweep ended ok ({_status_counts(rows)}); see {sweep_dir / 'summary.md'}",
        file=sys.stderr,
    )
    raise SystemExit(NO_OK_JOB_EXIT)
