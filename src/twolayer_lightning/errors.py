"""The errors this package raises for what a user can fix, each carrying its one-line message.

They import nothing heavy, so the command line can name them (and answer a mistake) before torch
and Lightning are loaded; :func:`describe_error` turns one of them, or a Hydra or OmegaConf error, into
the lines a user sees.
"""

from __future__ import annotations

import re

# The Hydra plugins of the optional extras: a missing one is named with the extra that installs it.
PLUGIN_EXTRAS = {
    "hydra/launcher/joblib": "sweep",
    "hydra/launcher/submitit_local": "sweep",
    "hydra/launcher/submitit_slurm": "sweep",
    "hydra/sweeper/optuna": "sweep",
}


class ConfigError(ValueError):
    """One or more config values are out of range; ``problems`` holds one line per value."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class DataError(ValueError):
    """A data file cannot be used. The one-line message names the file, what is wrong, the value seen and the fix."""


class DiskFullError(OSError):
    """The disk filled up while a run wrote its files; the checkpoints written before are intact."""


class TrainingDivergedError(RuntimeError):
    """The training loss became inf or nan; ``metrics.json`` says ``diverged``."""


class TrainingInterruptedError(RuntimeError):
    """SIGTERM or SIGINT stopped the run; ``metrics.json`` records it (see ``results.run_status``).

    Attributes:
        exit_code: the shell's convention for the signal, 128 + its number (143 SIGTERM, 130 SIGINT).
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class UnsupportedLightningError(RuntimeError):
    """The installed Lightning lacks or changed a private API this package uses; the line names the tested versions."""


def describe_error(err: BaseException) -> str:
    """One line (or one per problem) for a user's mistake: what is wrong, the value, what to use."""
    from omegaconf import DictConfig, OmegaConf  # here: a user's mistake is answered without them loaded first
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    from twolayer_lightning.config import Config

    if isinstance(err, ConfigError):
        return "\n".join(f"error: {problem}" for problem in err.problems)
    if isinstance(err, DiskFullError):
        return f"error: {err.strerror}"
    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key = cause.full_key
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
            parent, _, _ = key.rpartition(".")
            schema = OmegaConf.structured(Config)
            node = OmegaConf.select(schema, parent) if parent else schema
            known = (
                ", ".join(f"{parent + '.' if parent else ''}{k}" for k in node) if isinstance(node, DictConfig) else ""
            )
            return f"error: unknown config key {key!r}" + (f"; known keys here: {known}" if known else "")
        message = str(cause.msg).splitlines()[0] if getattr(cause, "msg", None) else str(cause).splitlines()[0]
        return f"error: {key}: {message}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if "Config search path:" in lines:
        lines = lines[: lines.index("Config search path:")]
    missing = re.search(r"Could not (?:find|load) '([\w/]+)'", lines[0]) if lines else None
    if missing and missing.group(1) in PLUGIN_EXTRAS:
        group, _, name = missing.group(1).rpartition("/")
        return (
            f"error: {group}={name} needs a Hydra plugin that is not installed: "
            f"pip install 'twolayer-lightning[{PLUGIN_EXTRAS[missing.group(1)]}]'"
        )
    return "error: " + " ".join(lines)
