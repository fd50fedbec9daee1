"""``python train.py -m hydra/launcher=stacked optim.lr=1e-7,5e-7,1e-6,2e-6 seed=0,1,2``

Hydra finds this launcher in the ``hydra_plugins`` namespace package (shipped in the
twolayer-lightning wheel). It gets every job's config (composed from the files once per kind of
job, the others derived from it: :class:`DerivedSweepConfigs`), groups the jobs whose configs
differ only in ``optim.lr`` and ``seed``, and trains each group as one Lightning fit
(:mod:`twolayer_lightning.stacked`); jobs that cannot be stacked (another mode, a resume,
several devices, mini-batches, validation rows, periodic checkpoints, ``update_path`` lightning or
cuda_graph) and groups of one run one at a time, as Hydra's basic launcher runs them. Every job
gets its own job dir, log file and return value for the sweeper either way.

This module imports only Hydra at import time: Hydra imports every plugin when any app starts
(and runs it outside ``sys.modules``, so no ``from __future__ import annotations`` here: the
dataclass below needs its annotations evaluated).
"""

import contextlib
import copy
import functools
import logging
import logging.handlers
import math
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.config_loader import ConfigLoader
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.twolayer_lightning_stacked.stacked_launcher.StackedLauncher"
    # true: each member runs its single job's kernels on its own tensors, bitwise equal to that job;
    # false: one batched program (bmm) for the whole group, faster and within a tested tolerance
    exact: bool = True
    # a stacked fit may take this share of the device's free memory; a larger group is split into fits that fit
    memory_fraction: float = 0.5


ConfigStore.instance().store(
    group="hydra/launcher", name="stacked", node=StackedLauncherConf, provider="twolayer-lightning"
)


# The keys whose values a job's config may take from a job composed before it (stacked.MEMBER_KEYS; not
# imported from there: this module imports only Hydra when it is loaded).
DERIVED_KEYS = ("optim.lr", "seed")


def _derivable(override: Override, loader: ConfigLoader) -> bool:
    """A plain ``optim.lr=value`` or ``seed=value`` (not a config group of that name): a value set after the
    defaults list is composed."""
    return (
        override.key_or_group in DERIVED_KEYS
        and not loader.repository.group_exists(override.key_or_group)
        and override.package is None
        and override.type == OverrideType.CHANGE
        and not override.is_sweep_override()
        and not isinstance(override.value(), (dict, list))
    )


class DerivedSweepConfigs:
    """Hydra's config loader, but a sweep job whose overrides differ from a job composed before it only in
    the values of :data:`DERIVED_KEYS` gets a copy of that job's config with its own values set.

    Composing a job from the YAML files and schemas takes 0.1-0.2 s, and a sweep composes every job
    twice (the sweeper checks each batch, the launcher composes each job); most of a stacked sweep
    went there. Values of config keys cannot change the defaults list (Hydra interpolates only group
    choices there), so the composed config of ``optim.lr=a seed=b`` is that of ``optim.lr=c seed=d``
    with the two values set by Hydra's own override code, plus the job's entries in
    ``hydra.overrides.task`` and ``hydra.job.override_dirname``. tests/test_stacked.py compares such
    copies with Hydra's own compositions. Everything but :meth:`load_sweep_config` is the wrapped
    loader's.
    """

    def __init__(self, loader: ConfigLoader) -> None:
        self.loader = loader
        self.composed: dict[tuple[int, tuple[str, ...]], tuple[DictConfig, DictConfig]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        parsed = OverridesParser.create().parse_overrides(list(sweep_overrides))
        derived = [o for o in parsed if _derivable(o, self.loader)]
        shape = tuple(f"{o.key_or_group}=*" if o in derived else str(o.input_line) for o in parsed)
        master, base = self.composed.get((id(master_config), shape), (None, None))
        if master is not master_config or base is None:
            base = self.loader.load_sweep_config(master_config, list(sweep_overrides))
            self.composed[(id(master_config), shape)] = (master_config, base)
            return copy.deepcopy(base)
        config = copy.deepcopy(base)
        ConfigLoaderImpl._apply_overrides_to_config(derived, config)
        job = [o for o in parsed if not o.is_hydra_override()]
        config.hydra.overrides.task = [o.input_line for o in job]
        names = config.hydra.job.config.override_dirname
        config.hydra.job.override_dirname = get_overrides_dirname(
            overrides=job, exclude_keys=list(names.exclude_keys), item_sep=names.item_sep, kv_sep=names.kv_sep
        )
        OmegaConf.copy_cache(from_config=master_config, to_config=config)  # as Hydra does: same ${now:} etc.
        return config


class StackedLauncher(Launcher):
    """Launches a sweep's jobs, stacking those that differ only in ``optim.lr`` and ``seed`` into one fit."""

    def __init__(self, exact: bool = True, memory_fraction: float = 0.5) -> None:
        super().__init__()
        self.exact = exact
        self.memory_fraction = memory_fraction
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        # The sweeper holds this same context and composes every job of a batch through it before the
        # launch: it gets the derived configs too.
        if not isinstance(hydra_context.config_loader, DerivedSweepConfigs):
            hydra_context.config_loader = DerivedSweepConfigs(hydra_context.config_loader)
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from twolayer_lightning import stacked  # here, not at import: see the module's docstring
        from twolayer_lightning.config import ConfigError

        if not 0 < self.memory_fraction <= 1:  # checked here: an error in __init__ reaches the user wrapped by Hydra
            raise ConfigError(
                [f"hydra.launcher.memory_fraction={self.memory_fraction!r} is not allowed; use a number in (0, 1]"]
            )
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        mode = "exact" if self.exact else "batched"
        log.info(f"Launching {len(job_overrides)} jobs locally, stacked ({mode})")
        configs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = idx
                config.hydra.job.num = idx
            configs.append(config)
        returns: list[JobReturn | None] = [None] * len(configs)
        groups: dict[str, list[int]] = {}
        for i, config in enumerate(configs):
            why = stacked.why_alone(config)
            if why is not None:
                log.info(f"\t#{initial_job_idx + i} runs on its own: {why}")
                groups[f"alone {i}"] = [i]
            else:
                groups.setdefault(stacked.group_key(config), []).append(i)
        for group in groups.values():
            if len(group) == 1:
                returns[group[0]] = self._run(configs[group[0]], self.task_function)
            else:
                self._launch_group([configs[i] for i in group], group, returns)
        return returns  # type: ignore[return-value]

    def _run(self, config: DictConfig, task_function: Any) -> JobReturn:
        """One job as Hydra's basic launcher runs it: its job dir, log file and config files, then the task."""
        ret = run_job(
            hydra_context=self.hydra_context,
            task_function=task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def _prepare(self, config: DictConfig, prepare: Any) -> Any:
        """``prepare`` the member with the job's Hydra config set as ``run_job`` sets it before a task (its run
        dir, ``${hydra:runtime.output_dir}``); the job itself runs later, in ``run_job`` (its config files, log
        file, callbacks, return value), once the stacked fit is done. What ``prepare`` logs is kept on the
        member and goes to the job's log then (see ``stacked.finish``)."""
        sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
        outer = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(config)  # the job's id and num, for its subdir
        out = (sweep_dir / str(OmegaConf.select(config, "hydra.sweep.subdir"))).absolute()
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = str(out)
        HydraConfig.instance().set_config(config)  # now with the output dir
        root = logging.getLogger()
        handlers, records = root.handlers[:], logging.handlers.BufferingHandler(capacity=1_000_000)
        root.handlers = [records]
        cwd = os.getcwd()
        try:
            if config.hydra.job.chdir:
                out.mkdir(parents=True, exist_ok=True)  # as run_job: the job runs in its dir
                os.chdir(out)  # so relative data paths are read from there
            member = prepare(config)
            member.records = records.buffer
            return member
        except BaseException:
            root.handlers = handlers
            for record in records.buffer:  # what led up to the error, where it shows now
                root.handle(record)
            raise
        finally:
            os.chdir(cwd)
            root.handlers = handlers
            HydraConfig.instance().cfg = outer

    def _launch_group(self, configs: list[DictConfig], indices: list[int], returns: list[JobReturn | None]) -> None:
        """Prepare every member (a bad one fails alone, as a job of its own), fit them together, then run each
        member's job: its files, its log lines and its return value."""
        from twolayer_lightning import stacked
        from twolayer_lightning.cli import describe_error
        from twolayer_lightning.config import ConfigError
        from twolayer_lightning.data import DataError
        from twolayer_lightning.report import summarize_sweep
        from twolayer_lightning.training import signals_held

        members: list[tuple[int, Any]] = []  # (index into returns, Member)
        for i, config in zip(indices, configs, strict=True):
            try:
                members.append((i, self._prepare(config, stacked.prepare)))
            except (ConfigError, DataError) as err:
                # As a single job of a sweep: its job dir and log with the one line, +inf, the others go on.
                returns[i] = self._run(config, functools.partial(_fail, describe_error(err)))
        if not members:
            return
        try:
            accelerator = members[0][1].cfg.trainer.accelerator
            free = stacked.free_memory(accelerator)
            parts = stacked.chunks([m for _, m in members], self.exact, free, self.memory_fraction)
            position = 0
            for part in parts:
                log.info(f"stacked fit of {len(part)} jobs")
                fit = stacked.fit_stacked(part, self.exact)
                with signals_held() as held:  # the files of every member are written before a signal acts
                    for member in part:
                        i = members[position][0]
                        position += 1
                        returns[i] = self._run(
                            configs[indices.index(i)],
                            functools.partial(_finish, stacked.finish, member, len(part), self.exact, fit),
                        )
                signum = fit.interrupted or (held[0] if held else None)
                if signum:
                    # As a single job: a signal ends the whole sweep, after summarizing what ran. Members of
                    # later fits never started: their folders (only the log of their preparation) go.
                    for index, member in members[position:]:
                        member.lock.release()
                        log_file = member.out / f"{configs[indices.index(index)].hydra.job.name}.log"
                        log_file.unlink(missing_ok=True)
                        with contextlib.suppress(OSError):
                            member.out.rmdir()
                    summarize_sweep(self.config.hydra.sweep.dir)
                    name = signal.Signals(signum).name
                    if fit.interrupted:
                        line = (
                            f"interrupted by {name} after {fit.global_step} updates of a stacked fit of "
                            f"{len(part)} jobs, each saved in its last.ckpt; resume one with `python train.py "
                            "hydra.run.dir=<its job dir> ckpt_path=last <its overrides>`"
                        )
                    else:
                        line = f"interrupted by {name} after the stacked fit had finished; its jobs' files are complete"
                    print(f"error: {line}", file=sys.stderr)
                    raise SystemExit(128 + signum)
        finally:
            for _, member in members:
                member.lock.release()  # no-op for the members that finished


def _finish(finish: Any, member: Any, group_size: int, exact: bool, fit: Any, cfg: DictConfig) -> float:
    """A member's task in its job: ``stacked.finish`` (the config is the member's, read when it was prepared),
    its objective as a single job's; an interrupted member's line is logged (the launcher ends the sweep)."""
    from twolayer_lightning.cli import sweep_objective
    from twolayer_lightning.errors import TrainingInterruptedError

    try:
        return sweep_objective(lambda: finish(member, group_size, exact, fit))
    except TrainingInterruptedError as err:
        log.error("job interrupted: %s", err)
        return math.inf


def _fail(line: str, cfg: DictConfig) -> float:
    """The task of a member whose config or data was refused: its one line, and +inf for the sweeper."""
    log.error("job failed: %s", line)
    return math.inf
