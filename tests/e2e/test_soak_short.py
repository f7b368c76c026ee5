"""`scripts/soak.py --short`: one minute of mixed load with cancels against `up --replicas 2`
while a worker, a scheduler replica and the frontend are each killed -9 once: nothing lost, nothing
hung, no KV block left held."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"


def test_short_soak_loses_nothing_under_kills(tmp_path):
    result = subprocess.run(
        [sys.executable, str(_SCRIPT), "--short", "--log-dir", str(tmp_path / "logs"), "--concurrency", "4"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(lines[-1])
    assert report["kills"] == {"worker": 1, "scheduler": 1, "frontend": 1}, report
    assert report["restarts"] >= 3, report
    assert report["completed_exact"] > 0 and report["cancelled"] > 0, report
    assert report["completed_wrong_count"] == 0, report
    assert report["lost"] == 0 and report["hung"] == 0, report
    assert len(report["kv_blocks_in_use"]) == 2 and set(report["kv_blocks_in_use"].values()) == {0}, report
    assert report["up_alive"], report
    assert result.returncode == 0, report
