"""`kernelagent doctor` checks the sandbox for real and says what is wrong."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.sandbox


def doctor(tmp_path, **env):
    return subprocess.run(
        [sys.executable, "-m", "kernelagent", "doctor"],
        env={**os.environ, "KERNELAGENT_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_doctor_passes_on_this_machine(tmp_path):
    result = doctor(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert all(line.startswith("ok") for line in lines), result.stdout
    assert any("network: blocked" in line for line in lines)
    assert any("limits enforced by" in line for line in lines)


def test_doctor_names_the_cause_when_the_kernelspec_is_missing(tmp_path):
    result = doctor(tmp_path, KERNELAGENT_KERNEL_NAME="nope")
    assert result.returncode == 1
    assert "FAIL" in result.stdout
    assert "no kernelspec named 'nope'" in result.stdout
    assert "Traceback" not in result.stderr
