"""The benchmark still runs and still finds every package variant bitwise equal to the raw loop.

Nothing here is timed: speed is read from the benchmark's own side-by-side table, never a test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--batch-size", "16"]], ids=["full-batch", "mini-batches"])
def test_benchmark_quick_run_is_bitwise(extra):
    result = subprocess.run(
        [sys.executable, "benchmarks/bench.py", "--quick", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "bitwise: yes" in result.stdout
    assert "bitwise: no" not in result.stdout
