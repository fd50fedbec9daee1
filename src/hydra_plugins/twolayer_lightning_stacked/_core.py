"""The stacked launcher's work: every job's config, the grouping, and each group's stacked fit.

:class:`~hydra_plugins.twolayer_lightning_stacked.stacked_launcher.StackedLauncher` imports this
module when a sweep uses it (Hydra's plugin scan skips names that start with ``_``). At import it
loads only Hydra and OmegaConf: torch, Lightning and the package's training code are imported in
:func:`launch`, after the sweeper has composed (and so checked) the jobs' configs.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import logging
import logging.handlers
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from hydra import __version__ as hydra_version
from hydra.core.config_loader import ConfigLoader
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

if TYPE_CHECKING:
    from hydra_plugins.twolayer_lightning_stacked.stacked_launcher import StackedLauncher

log = logging.getLogger(__name__)

# The hydra-core releases whose private override code DerivedSweepConfigs uses (pyproject.toml's bound).
SUPPORTED_HYDRA = "hydra-core>=1.3.2,<1.4"

# The keys whose values a job's config may take from a job composed before it (stacked.MEMBER_KEYS; not
# imported from there: this module imports only Hydra when it is loaded).
DERIVED_KEYS = ("optim.lr", "seed")


class OverrideCode(NamedTuple):
    """Hydra's own code that sets override values on a composed config and names a job's overrides."""

    apply: Callable[[list[Override], DictConfig], None]  # sets each override's value, with Hydra's checks
    dirname: Callable[..., str]  # hydra.job.override_dirname from the job's overrides


def hydra_override_code() -> OverrideCode | None:
    """Hydra's private ``ConfigLoaderImpl._apply_overrides_to_config`` and ``get_overrides_dirname``, the one
    place this package reaches them; None, with one warning line, when this Hydra lacks them or has them with
    other parameters (a release outside :data:`SUPPORTED_HYDRA`): every job is then composed from the files."""
    try:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

        code = OverrideCode(ConfigLoaderImpl._apply_overrides_to_config, get_overrides_dirname)
        shapes = [list(inspect.signature(function).parameters) for function in code]
    except (ImportError, AttributeError, TypeError, ValueError):  # missing, or not a function any more
        shapes = None
    if shapes == [["overrides", "cfg"], ["overrides", "exclude_keys", "item_sep", "kv_sep"]]:
        return code
    log.warning(
        "hydra-core %s lacks the override code the stacked launcher derives jobs' configs with; it composes "
        "every job from the files instead (slower, the same configs); supported: %s",
        hydra_version,
        SUPPORTED_HYDRA,
    )
    return None


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

    A sweep composes every job twice (the sweeper checks each batch, the launcher composes each job),
    and composing from the YAML files and schemas is most of a stacked sweep's set-up (see
    benchmarks/README.md). Values of config keys cannot change the defaults list (Hydra interpolates
    only group choices there), so the composed config of ``optim.lr=a seed=b`` is that of
    ``optim.lr=c seed=d`` with the two values set by Hydra's own override code, plus the job's entries
    in ``hydra.overrides.task`` and ``hydra.job.override_dirname``. tests/test_stacked.py compares
    such copies with Hydra's own compositions. Without that code (:func:`hydra_override_code`), and
    for any job whose copy cannot be made, Hydra composes the job itself: the same config or the
    same error, only slower. Everything but :meth:`load_sweep_config` is the wrapped loader's.
    """

    def __init__(self, loader: ConfigLoader) -> None:
        self.loader = loader
        self.code = hydra_override_code()
        self.composed: dict[tuple[int, tuple[str, ...]], tuple[DictConfig, DictConfig]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        if self.code is None:
            return self.loader.load_sweep_config(master_config, list(sweep_overrides))
        parsed = OverridesParser.create().parse_overrides(list(sweep_overrides))
        derived = [o for o in parsed if _derivable(o, self.loader)]
        shape = tuple(f"{o.key_or_group}=*" if o in derived else str(o.input_line) for o in parsed)
        master, base = self.composed.get((id(master_config), shape), (None, None))
        if master is not master_config or base is None:
            base = self.loader.load_sweep_config(master_config, list(sweep_overrides))
            self.composed[(id(master_config), shape)] = (master_config, base)
            return copy.deepcopy(base)
        try:
            return self._derive(base, master_config, parsed, derived)
        except Exception:  # a value Hydra refuses (seed=abc), or anything else: Hydra's own answer, config or error
            return self.loader.load_sweep_config(master_config, list(sweep_overrides))

    def _derive(
        self, base: DictConfig, master_config: DictConfig, parsed: list[Override], derived: list[Override]
    ) -> DictConfig:
        """A copy of ``base`` with the ``derived`` values and the job's own override entries."""
        assert self.code is not None
        config = copy.deepcopy(base)
        self.code.apply(derived, config)
        job = [o for o in parsed if not o.is_hydra_override()]
        config.hydra.overrides.task = [o.input_line for o in job]
        names = config.hydra.job.config.override_dirname
        config.hydra.job.override_dirname = self.code.dirname(
            overrides=job, exclude_keys=list(names.exclude_keys), item_sep=names.item_sep, kv_sep=names.kv_sep
        )
        OmegaConf.copy_cache(from_config=master_config, to_config=config)  # as Hydra does: same ${now:} etc.
        return config


def with_derived_configs(hydra_context: HydraContext) -> HydraContext:
    """``hydra_context`` with its config loader wrapped in :class:`DerivedSweepConfigs` (once).

    The sweeper holds this same context and composes every job of a batch through it before the launch:
    it gets the derived configs too.
    """
    if not isinstance(hydra_context.config_loader, DerivedSweepConfigs):
        hydra_context.config_loader = DerivedSweepConfigs(hydra_context.config_loader)
    return hydra_context


def launch(launcher: StackedLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """Run a batch of jobs: each group of stackable jobs as one fit, every other job as the basic launcher does."""
    from twolayer_lightning.config import ConfigError

    if not 0 < launcher.memory_fraction <= 1:  # checked here: an error in __init__ reaches the user wrapped by Hydra
        raise ConfigError(
            [f"hydra.launcher.memory_fraction={launcher.memory_fraction!r} is not allowed; use a number in (0, 1]"]
        )
    setup_globals()
    assert launcher.config is not None and launcher.hydra_context is not None
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    mode = "exact" if launcher.exact else "batched"
    log.info(f"Launching {len(job_overrides)} jobs locally, stacked ({mode})")
    configs = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        configs.append(config)
    returns: list[JobReturn | None] = [None] * len(configs)
    for group in group_jobs(configs, initial_job_idx):
        if len(group) == 1:
            returns[group[0]] = _run(launcher, configs[group[0]], launcher.task_function)
        else:
            _launch_group(launcher, {i: configs[i] for i in group}, returns)
    return returns  # type: ignore[return-value]


def group_jobs(configs: Sequence[DictConfig], initial_job_idx: int = 0) -> list[list[int]]:
    """The jobs' indices into ``configs`` in groups that may share a fit (``stacked.group_key``); a job that
    may not (``stacked.why_alone``, logged with the job's number) is a group of its own."""
    from twolayer_lightning import stacked

    groups: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        why = stacked.why_alone(config)
        if why is not None:
            log.info(f"\t#{initial_job_idx + i} runs on its own: {why}")
            groups[f"alone {i}"] = [i]
        else:
            groups.setdefault(stacked.group_key(config), []).append(i)
    return list(groups.values())


def _run(launcher: StackedLauncher, config: DictConfig, task_function: TaskFunction | None) -> JobReturn:
    """One job as Hydra's basic launcher runs it: its job dir, log file and config files, then the task."""
    assert launcher.config is not None
    ret = run_job(
        hydra_context=launcher.hydra_context,
        task_function=task_function,
        config=config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    return ret


def _prepare(config: DictConfig, prepare: Any) -> Any:
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


def _prepare_members(
    launcher: StackedLauncher, configs: dict[int, DictConfig], returns: list[JobReturn | None]
) -> list[tuple[int, Any]]:
    """Each job's ``stacked.Member`` with its index into ``returns``; a job whose config or data is refused
    fails alone, as a job of its own: its job dir and log with the one line, +inf, the others go on."""
    from twolayer_lightning import stacked
    from twolayer_lightning.errors import ConfigError, DataError, describe_error

    members: list[tuple[int, Any]] = []
    for i, config in configs.items():
        try:
            members.append((i, _prepare(config, stacked.prepare)))
        except (ConfigError, DataError) as err:
            returns[i] = _run(launcher, config, functools.partial(_fail, describe_error(err)))
    return members


def _launch_group(launcher: StackedLauncher, configs: dict[int, DictConfig], returns: list[JobReturn | None]) -> None:
    """Prepare every member of a group (``configs`` by index into ``returns``), fit them together in parts
    that fit in memory, then run each member's job: its files, its log lines and its return value."""
    from twolayer_lightning import stacked
    from twolayer_lightning.training import signals_held

    members = _prepare_members(launcher, configs, returns)
    if not members:
        return
    try:
        accelerator = members[0][1].cfg.trainer.accelerator
        free = stacked.free_memory(accelerator)
        parts = stacked.chunks([m for _, m in members], launcher.exact, free, launcher.memory_fraction)
        position = 0
        for part in parts:
            log.info(f"stacked fit of {len(part)} jobs")
            fit = stacked.fit_stacked(part, launcher.exact)
            with signals_held() as held:  # the files of every member are written before a signal acts
                for member in part:
                    i = members[position][0]
                    position += 1
                    finish = functools.partial(_finish, stacked.finish, member, len(part), launcher.exact, fit)
                    returns[i] = _run(launcher, configs[i], finish)
            signum = fit.interrupted or (held[0] if held else None)
            if signum:
                _stop_sweep(launcher, fit, len(part), signum, [(m, configs[i]) for i, m in members[position:]])
    finally:
        for _, member in members:
            member.lock.release()  # no-op for the members that finished


def _stop_sweep(
    launcher: StackedLauncher, fit: Any, size: int, signum: int, unstarted: list[tuple[Any, DictConfig]]
) -> NoReturn:
    """As a single job: a signal ends the whole sweep, after summarizing what ran. Members of later fits
    (``unstarted``) never started: their folders (only the log of their preparation) go."""
    from twolayer_lightning.report import summarize_sweep
    from twolayer_lightning.rundir import command

    assert launcher.config is not None
    for member, config in unstarted:
        member.lock.release()
        (member.out / f"{config.hydra.job.name}.log").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            member.out.rmdir()
    summarize_sweep(launcher.config.hydra.sweep.dir)
    name = signal.Signals(signum).name
    if fit.interrupted:
        sweep_dir = launcher.config.hydra.sweep.dir
        line = (
            f"interrupted by {name} after {fit.global_step} updates of a stacked fit of {size} jobs, each that had "
            f"not diverged saved in its last.ckpt; resume the sweep in place with `{command() or 'python train.py'} "
            f"-m <its overrides> hydra.sweep.dir={sweep_dir} ckpt_path=last`"
        )
    else:
        line = f"interrupted by {name} after the stacked fit had finished; its jobs' files are complete"
    print(f"error: {line}", file=sys.stderr)
    raise SystemExit(128 + signum)


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
