"""``python train.py -m hydra/launcher=stacked optim.lr=1e-7,5e-7,1e-6,2e-6 seed=0,1,2``

Hydra finds this launcher in the ``hydra_plugins`` namespace package (shipped in the
twolayer-lightning wheel). It gets every job's config (composed from the files once per kind of
job, the others derived from it), groups the jobs whose configs differ only in ``optim.lr`` and
``seed``, and trains each group as one Lightning fit (:mod:`twolayer_lightning.stacked`); jobs that
cannot be stacked and groups of one run one at a time, as Hydra's basic launcher runs them. Every
job gets its own job dir, log file and return value for the sweeper either way.

Hydra imports every module under ``hydra_plugins`` whenever any Hydra app starts, so this one holds
only the launcher's config and a thin :class:`StackedLauncher`, and imports only Hydra's public
modules; the work is in :mod:`._core` (a name Hydra's scan skips), imported when the launcher is
used, as hydra-joblib-launcher does. Hydra runs this module outside ``sys.modules`` when it scans
it, so no ``from __future__ import annotations`` here: the dataclass needs its annotations evaluated.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


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
        from hydra_plugins.twolayer_lightning_stacked import _core  # here, not at import: see the module's docstring

        self.config = config
        self.hydra_context = _core.with_derived_configs(hydra_context)
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra_plugins.twolayer_lightning_stacked import _core

        return _core.launch(self, job_overrides, initial_job_idx)
