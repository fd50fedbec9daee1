"""Shared by the tests that run the command line as a user types it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def train_py() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `python train.py *args` from the repository root in a fresh process; return its result."""

    def run_train_py(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )

    return run_train_py
