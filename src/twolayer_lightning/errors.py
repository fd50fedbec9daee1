"""The errors this package raises for what a user can fix, each carrying its one-line message.

They import nothing heavy, so the command line can name them (and answer a mistake) before torch
and Lightning are loaded.
"""

from __future__ import annotations


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
