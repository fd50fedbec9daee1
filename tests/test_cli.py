"""The command line as a user types it: config composition, one-line errors, real runs and sweeps."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from twolayer_lightning import ConfigError, TrainingDivergedError, run
from twolayer_lightning.cli import main
from twolayer_lightning.config import validate

ROOT = Path(__file__).resolve().parents[1]


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows that carry a train_loss (Lightning's CSVLogger adds rows for other metrics)."""
    with path.open(newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("train_loss")]


@pytest.mark.parametrize(
    ("overrides", "key", "expected"),
    [
        ([], "optim.lr", 1e-6),
        (["optim.lr=2e-6"], "optim.lr", 2e-6),
        (["model.hidden_features=50"], "model.hidden_features", 50),
        (["trainer.accelerator=auto", "trainer.devices=auto"], "trainer.devices", "auto"),
        (["seed=0"], "seed", 0),
        (["model.activation=function"], "model.activation", "function"),
    ],
)
def test_config_composes_with_overrides(overrides, key, expected):
    with initialize_config_module(config_module="twolayer_lightning.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    node = cfg
    for part in key.split("."):
        node = node[part]
    assert node == expected
    validate(cfg, cuda_available=False)


def test_default_config_is_the_seed():
    with initialize_config_module(config_module="twolayer_lightning.conf", version_base="1.3"):
        cfg = compose(config_name="config")
    sizes = (cfg.data.num_samples, cfg.model.in_features, cfg.model.hidden_features, cfg.model.out_features)
    assert sizes == (64, 1000, 100, 10)  # the seed's N, D_in, H, D_out
    assert (cfg.optim.lr, cfg.trainer.max_steps, cfg.trainer.accelerator, cfg.seed) == (1e-6, 500, "cpu", 0)


BAD_INPUTS = [
    # (overrides, what the one line must contain)
    (["optim.lrr=1"], ["unknown config key 'optim.lrr'", "optim.lr"]),
    # Hydra's + adds a key past the typed schema; nothing would read it, so it is refused, not ignored.
    (["+trainer.fast_dev_run=true"], ["+trainer.fast_dev_run", "trainer.max_steps", "trainer.accelerator"]),
    (["++model.dropout=0.1"], ["+model.dropout", "model.hidden_features"]),
    (["+foo=1"], ["+foo", "the keys here are mode, seed"]),
    (["optim.lr=abc"], ["optim.lr='abc'", "> 0", "or auto"]),
    (["optim.lr=0"], ["optim.lr=0.0", "> 0"]),
    (["optim.lr=-1e-6"], ["optim.lr=-1e-06", "> 0"]),
    (["model.hidden_features=0"], ["model.hidden_features=0", "> 0"]),
    (["data.num_samples=-5"], ["data.num_samples=-5", "> 0"]),
    (["trainer.max_steps=0"], ["trainer.max_steps=0", "> 0"]),
    (["trainer.accelerator=tpu"], ["trainer.accelerator='tpu'", "cpu, gpu, auto"]),
    (["trainer.precision=16-mixed"], ["trainer.precision='16-mixed'", "32-true"]),
    (["model.activation=relu"], ["model.activation='relu'", "clamp, function"]),
    (["ckpt_path=/nonexistent/last.ckpt"], ["ckpt_path='/nonexistent/last.ckpt'", "not a file"]),
    (["trainer.update_path=graph"], ["trainer.update_path='graph'", "direct, lightning, cuda_graph"]),
    (["trainer.update_path=cuda_graph"], ["update_path='cuda_graph' needs a GPU", "trainer.update_path=direct"]),
    (["trainer=ddp", "trainer.update_path=direct"], ["trainer.update_path='direct'", "trainer.update_path=lightning"]),
    (
        ["data=files", "data.x_path=x.npy", "data.batch_size=8", "trainer.updates_per_step=5"],
        ["trainer.updates_per_step=5 is not allowed with data.batch_size=8", "trainer.updates_per_step=1"],
    ),
]
if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
    BAD_INPUTS.append((["logger=tensorboard"], ["logger='tensorboard'", "twolayer-lightning[tensorboard]"]))
if not torch.cuda.is_available():
    BAD_INPUTS.append(
        (["trainer.accelerator=gpu"], ["trainer.accelerator='gpu'", "no CUDA", "trainer.accelerator=cpu"])
    )


def error_lines_of_main(argv: list[str], tmp_path: Path, monkeypatch, capsys) -> list[str]:
    """Run `python train.py *argv` in this process; it must exit 2 without a traceback."""
    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(("overrides", "fragments"), BAD_INPUTS, ids=lambda v: " ".join(v) if v and "=" in v[0] else "")
def test_bad_input_gives_one_line_and_exit_2(overrides, fragments, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    lines = error_lines_of_main([*overrides, f"output_dir={out}"], tmp_path, monkeypatch, capsys)
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0]
    assert not out.exists()  # nothing written


def test_hydra_full_error_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py", "optim.lr=0", f"output_dir={tmp_path / 'run'}"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"optim\.lr=0\.0"):
        main()


def test_cuda_graph_with_several_processes_is_refused_on_a_gpu_machine():
    """Two devices make Lightning start DDP by itself; the graph runs in one process."""
    with initialize_config_module(config_module="twolayer_lightning.conf", version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["trainer.accelerator=gpu", "trainer.devices=2", "trainer.update_path=cuda_graph"],
        )
    with pytest.raises(ConfigError) as info:
        validate(cfg, cuda_available=True)
    assert len(info.value.problems) == 1
    assert "trainer.update_path='cuda_graph' is not allowed with trainer.devices=2" in info.value.problems[0]
    assert "use trainer.devices=1, or trainer.update_path=direct" in info.value.problems[0]


def test_several_problems_are_reported_together():
    with initialize_config_module(config_module="twolayer_lightning.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["optim.lr=0", "trainer.max_steps=-1", "model.out_features=0"])
    with pytest.raises(ConfigError) as info:
        validate(cfg, cuda_available=False)
    assert [p.split("=")[0] for p in info.value.problems] == ["model.out_features", "optim.lr", "trainer.max_steps"]


def test_diverging_loss_stops_at_that_step_and_names_it(tmp_path, monkeypatch, capsys):
    (line,) = error_lines_of_main(["optim.lr=1e-3", f"output_dir={tmp_path}"], tmp_path, monkeypatch, capsys)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "diverged"
    assert metrics["global_step"] < 500  # stopped, not 500 steps of nan
    losses = [float(row["train_loss"]) for row in read_csv_rows(tmp_path / "csv" / "metrics.csv")]
    first_bad = next(t for t, loss in enumerate(losses) if not torch.isfinite(torch.tensor(loss)))
    assert f"at step {first_bad} " in line
    assert metrics["global_step"] == first_bad + 1  # on the CPU it stops at that very step
    assert f"stopped at step {first_bad};" in line
    assert "optim.lr=0.001" in line
    assert not (tmp_path / "last.ckpt").exists()


def test_run_raises_for_bad_config_and_divergence(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        run(["optim.lr=0"], output_dir=tmp_path / "a")
    with pytest.raises(TrainingDivergedError, match=r"optim\.lr=0\.001"):
        run(["optim.lr=1e-3", "logger=none"], output_dir=tmp_path / "b")


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("optim.nosuch=1", "unknown config key 'optim.nosuch'; known keys here: optim.lr"),
        ("+trainer.nosuch=1", "+trainer.nosuch is not a key of this project's config"),
        ("data=nosuch", "Could not find 'data/nosuch'"),
    ],
)
def test_run_raises_config_error_with_the_command_lines_line(override, line, tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError) as raised:
        run([override], output_dir=tmp_path / "run")
    monkeypatch.setattr(sys, "argv", ["train.py", override, f"hydra.run.dir={tmp_path / 'cli'}"])
    with pytest.raises(SystemExit):
        main()
    assert f"error: {raised.value}" == capsys.readouterr().err.strip()
    assert line in str(raised.value)
    assert not (tmp_path / "run").exists()


def test_run_says_where_it_wrote(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = run(["trainer.max_steps=1", "logger=none"])
    out = Path(metrics["output_dir"])
    assert out.is_absolute() and out.parent.parent == tmp_path / "outputs"
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 1


@pytest.mark.parametrize(
    ("choice", "plugin"),
    [
        ("hydra/launcher=joblib", "hydra_plugins.hydra_joblib_launcher"),
        ("hparams_search=lr_hidden", "hydra_plugins.hydra_optuna_sweeper"),
        ("hydra/launcher=slurm", "hydra_plugins.hydra_submitit_launcher"),
    ],
)
def test_a_missing_sweep_plugin_names_the_extra_to_install(choice, plugin, tmp_path):
    """As in a venv without the [sweep] extra: the plugin's package cannot be imported."""
    code = (
        "import sys\n"
        f"sys.modules[{plugin!r}] = None\n"
        "from twolayer_lightning.cli import main\n"
        f"sys.argv = ['train.py', '-m', {choice!r}, 'hydra.sweep.dir={tmp_path}']\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("pip install 'twolayer-lightning[sweep]'"), result.stderr
    assert "Traceback" not in result.stderr


def test_finished_run_dir_is_not_overwritten(tmp_path):
    run(["trainer.max_steps=2", "logger=none"], output_dir=tmp_path)
    before = (tmp_path / "metrics.json").read_text()
    with pytest.raises(ConfigError, match="already holds a finished run"):
        run(["trainer.max_steps=3", "logger=none"], output_dir=tmp_path)
    assert (tmp_path / "metrics.json").read_text() == before


def test_run_leaves_no_global_state_behind(tmp_path, monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    torch.set_float32_matmul_precision("high")
    torch.manual_seed(123)
    state = torch.get_rng_state()
    run(["trainer.max_steps=2", "logger=none"], output_dir=tmp_path)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.get_float32_matmul_precision() == "high"
    assert "PL_GLOBAL_SEED" not in os.environ
    torch.set_float32_matmul_precision("highest")


def test_tensorboard_logger_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    run(["trainer.max_steps=3", "logger=tensorboard"], output_dir=tmp_path)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_run_writes_metrics_checkpoint_and_per_step_csv(tmp_path):
    metrics = run(["trainer.max_steps=30", "trainer.log_every_n_steps=7"], output_dir=tmp_path)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics.pop("output_dir") == str(tmp_path.absolute())  # where run() wrote, for a caller who let it choose
    assert on_disk == metrics
    for key in ("train_loss", "global_step", "seed", "lr", "accelerator", "fit_seconds"):
        assert key in on_disk
    assert (on_disk["global_step"], on_disk["accelerator"]) == (30, "cpu")
    # Left null, updates_per_step is what log_every_n_steps allows; auto takes the handwritten path on a CPU.
    assert (on_disk["updates_per_step"], on_disk["update_path"]) == (7, "handwritten")
    rows = read_csv_rows(tmp_path / "csv" / "metrics.csv")
    assert [int(row["step"]) for row in rows] == list(range(30))  # every step; the console shows every 7th
    assert float(rows[-1]["train_loss"]) == metrics["train_loss"]
    reports = [row for row in rows if row["train_mse"]]
    assert [int(row["step"]) for row in reports] == [6, 13, 20, 27, 29]  # every 7 updates, and the last
    for row in reports:  # the seed's loss is a sum: MSE times N times D_out
        assert float(row["train_mse"]) * 64 * 10 == pytest.approx(float(row["train_loss"]), rel=1e-5)
    assert 0 <= metrics["dead_units"] <= 1
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 30


def test_a_stalled_run_with_dead_units_warns_naming_the_lr(tmp_path, caplog):
    """lr 2.5e-6 on the default problem: the loss stays finite but stalls near sum(y**2), most units dead."""
    with caplog.at_level("WARNING", logger="twolayer_lightning"):
        metrics = run(["optim.lr=2.5e-6", "trainer.max_steps=300", "logger=none"], output_dir=tmp_path / "bad")
    assert metrics["dead_units"] > 0.5
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "training stalled" in warning and "lr=2.5e-06" in warning
    caplog.clear()
    with caplog.at_level("WARNING", logger="twolayer_lightning"):
        healthy = run(["trainer.max_steps=300", "logger=none"], output_dir=tmp_path / "good")
    assert healthy["dead_units"] < 0.5
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    whole = run(["logger=none", "trainer.checkpoint_every_n_steps=200"], output_dir=tmp_path / "a")
    step_200 = tmp_path / "a" / "checkpoints" / "step-200.ckpt"
    assert torch.load(step_200, weights_only=True)["global_step"] == 200
    resumed = run(["logger=none", f"ckpt_path={step_200}"], output_dir=tmp_path / "b")
    assert resumed["global_step"] == whole["global_step"] == 500
    assert resumed["train_loss"] == whole["train_loss"]
    a = torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_another_model_or_other_data_is_refused(tmp_path):
    run(["logger=none", "trainer.max_steps=2"], output_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match=r"model\.hidden_features=50 differs"):
        run(["model.hidden_features=50", f"ckpt_path={tmp_path / 'a' / 'last.ckpt'}"], output_dir=tmp_path / "b")
    assert not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match=r"was trained on other data than seed=1"):
        run(["seed=1", f"ckpt_path={tmp_path / 'a' / 'last.ckpt'}"], output_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_intervals_that_updates_per_step_would_skip_are_refused(tmp_path):
    with pytest.raises(
        ConfigError, match=r"trainer\.checkpoint_every_n_steps=25 is not allowed with trainer\.updates_per_step=10"
    ):
        run(["trainer.updates_per_step=10", "trainer.checkpoint_every_n_steps=25"], output_dir=tmp_path)


def test_checkpoints_with_several_updates_per_step_land_on_their_steps(tmp_path):
    run(
        ["trainer.updates_per_step=10", "trainer.checkpoint_every_n_steps=20", "trainer.max_steps=60", "logger=none"],
        output_dir=tmp_path,
    )
    saved = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert saved == ["step-20.ckpt", "step-40.ckpt", "step-60.ckpt"]


@pytest.mark.parametrize("update_path", ["handwritten", "direct", "lightning"])
@pytest.mark.parametrize("updates_per_step", ["null", 7, 64])
def test_updates_per_step_keeps_steps_and_results_exact(tmp_path, updates_per_step, update_path):
    """Several updates per Lightning step: the same arithmetic, global_step exact although 7 does not divide 50."""
    baseline = run(
        ["trainer.max_steps=50", "logger=none", "trainer.updates_per_step=1", "trainer.update_path=lightning"],
        output_dir=tmp_path / "one",
    )
    grouped = run(
        [
            "trainer.max_steps=50",
            "logger=none",
            f"trainer.updates_per_step={updates_per_step}",
            f"trainer.update_path={update_path}",
        ],
        output_dir=tmp_path / "many",
    )
    assert grouped["global_step"] == 50
    assert grouped["train_loss"] == baseline["train_loss"]
    assert torch.equal(
        torch.load(tmp_path / "many" / "last.ckpt", weights_only=True)["state_dict"]["net.w1"],
        torch.load(tmp_path / "one" / "last.ckpt", weights_only=True)["state_dict"]["net.w1"],
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], 50),  # log_every_n_steps=50 and nothing else to hit
        (["trainer.log_every_n_steps=10"], 10),
        (["trainer.checkpoint_every_n_steps=20"], 10),  # gcd(50, 20): both fire on their steps
        (["trainer.checkpoint_every_n_steps=7"], 1),
        (["trainer.updates_per_step=64"], 64),  # as given
        (["data=files", "data.x_path=x.npy", "data.val_fraction=0.2", "trainer.val_every_n_steps=30"], 10),
        (["data=files", "data.x_path=x.npy", "data.batch_size=8"], 1),  # one update per mini-batch
        (["trainer=ddp"], 1),  # DDP syncs once per training step
        (["trainer.devices=2"], 1),  # two processes: Lightning picks DDP by itself
        (["trainer.devices=auto"], 50),  # on the CPU that is one device
        (["trainer.accelerator=gpu", "trainer.devices=auto"], 1),  # as many GPUs as the machine has
    ],
)
def test_updates_per_step_left_null_is_the_most_every_interval_allows(overrides, expected):
    from twolayer_lightning.config import updates_per_step

    with initialize_config_module(config_module="twolayer_lightning.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    assert updates_per_step(cfg) == expected


@pytest.mark.parametrize("updates_per_step", [3, 1])
def test_progress_bar_counts_updates_up_to_max_steps(tmp_path, capsys, updates_per_step):
    """The bar counts every update against max_steps and ends full, with no time left, as the fit does."""
    run(
        ["trainer.enable_progress_bar=true", "trainer.max_steps=7", f"trainer.updates_per_step={updates_per_step}"],
        output_dir=tmp_path / "run",
    )
    # tqdm redraws the line after a carriage return: "Epoch 0:  43%|####2     | 3/7 [00:00<00:00, 202.17it/s]"
    frames = re.findall(r"Epoch 0: .*?\| (\d+)/(\d+) \[[\d:]+<([\d:?]+)", capsys.readouterr().out)
    assert frames
    assert {int(total) for _, total, _ in frames} == {7}
    counts = [int(n) for n, _, _ in frames]
    # One redraw per training step, each after its updates: 3, 6 and 7 (the last step runs what max_steps leaves).
    expected = [*range(updates_per_step, 7, updates_per_step), 7]
    assert [n for i, n in enumerate(counts) if n and n not in counts[:i]] == expected
    assert counts[-1] == 7 and frames[-1][2] == "00:00"  # ends at 7/7 with no time left


@pytest.mark.slow
def test_train_py_runs_from_the_shell(tmp_path, train_py):
    out = tmp_path / "run"
    result = train_py("trainer.max_steps=20", "trainer.log_every_n_steps=5", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr
    console = result.stdout + result.stderr
    assert console.count(" loss ") >= 4  # the seed's `t loss` lines, every 5 steps
    assert "done: train, 20 steps" in console
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 20
    assert (out / "last.ckpt").is_file()


@pytest.mark.slow
def test_a_value_out_of_range_is_refused_before_hydra_writes_anything(tmp_path, train_py):
    out = tmp_path / "run"
    result = train_py("optim.lr=-1", "trainer.max_steps=0", f"hydra.run.dir={out}")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and errors[0].startswith("error: optim.lr=-1.0 is not allowed"), result.stderr
    assert "trainer.max_steps=0" in errors[1]
    assert "Traceback" not in result.stderr
    assert not out.exists()  # no .hydra/, no train.log


@pytest.mark.slow
def test_multirun_makes_one_dir_and_metrics_per_job(tmp_path, train_py):
    sweep = tmp_path / "sweep"
    result = train_py(
        "-m",
        "optim.lr=1e-6,2e-6",
        "model.hidden_features=50,100",
        "trainer.max_steps=20",
        "logger=none",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(jobs) == 4
    seen = {(m["lr"], m["hidden_features"]) for m in (json.loads((j / "metrics.json").read_text()) for j in jobs)}
    assert seen == {(1e-6, 50), (1e-6, 100), (2e-6, 50), (2e-6, 100)}
    # Jobs share one process; each must equal the same job run alone.
    alone = run(
        ["optim.lr=2e-6", "model.hidden_features=50", "trainer.max_steps=20", "logger=none"],
        output_dir=tmp_path / "alone",
    )
    (job,) = [
        j
        for j in jobs
        if json.loads((j / "metrics.json").read_text())["lr"] == 2e-6
        and json.loads((j / "metrics.json").read_text())["hidden_features"] == 50
    ]
    assert json.loads((job / "metrics.json").read_text())["train_loss"] == alone["train_loss"]


@pytest.mark.slow
def test_installed_wheel_runs_with_packaged_configs_from_any_folder(tmp_path):
    """A non-editable install: `python -m twolayer_lightning` finds the configs inside the package."""
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(ROOT)], check=True, timeout=600)
    (wheel,) = wheels.glob("twolayer_lightning-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=600)
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the editable checkout on sys.path
    result = subprocess.run(
        [sys.executable, "-c", "import twolayer_lightning; print(twolayer_lightning.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.startswith(str(site))
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "twolayer_lightning", "trainer.max_steps=3", f"hydra.run.dir={out}"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 3


def test_run_reuses_a_composed_config_but_not_its_output_dir_or_a_stale_file(tmp_path, monkeypatch):
    import hydra

    from twolayer_lightning import cli

    composed = []
    compose_config = hydra.compose
    monkeypatch.setattr(hydra, "compose", lambda **kwargs: composed.append(kwargs) or compose_config(**kwargs))
    overrides = ["trainer.max_steps=2", "logger=none", "seed=11"]  # seed 11: no other test composes this
    first = run(overrides, output_dir=tmp_path / "a")
    second = run(overrides, output_dir=tmp_path / "b")
    assert len(composed) == 1  # the second run took the composed config
    assert (first["output_dir"], second["output_dir"]) == (str(tmp_path / "a"), str(tmp_path / "b"))
    ignored = ("fit_seconds", "versions", "output_dir")
    assert first == {**second, **{key: first[key] for key in ignored}}
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["global_step"] == 2
    assert (tmp_path / "b" / "last.ckpt").is_file()  # each run wrote into its own output_dir

    config_yaml = Path(cli.__file__).parent / "conf" / "config.yaml"
    stat = config_yaml.stat()
    try:
        os.utime(config_yaml, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # as an edit of the file would
        run(overrides, output_dir=tmp_path / "c")
    finally:
        os.utime(config_yaml, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert len(composed) == 2  # an edited config file is read again
