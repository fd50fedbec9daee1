"""Shared by the tests that run the command line as a user types it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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


@pytest.fixture
def signal_train_py() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Start `python train.py *args`, send `signum` `delay` seconds after it prints a line containing
    `ready`, and wait for it to end; its output is stdout and stderr together."""

    def run(
        *args: str, ready: str, signum: int = signal.SIGTERM, delay: float = 0.0, timeout: int = 300
    ) -> subprocess.CompletedProcess[str]:
        process = subprocess.Popen(
            [sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        lines = []
        for line in process.stdout:
            lines.append(line)
            if ready in line:
                time.sleep(delay)
                os.kill(process.pid, signum)
                break
        rest, _ = process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(process.args, process.returncode, "".join(lines) + rest)

    return run
