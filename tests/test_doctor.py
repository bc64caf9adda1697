"""`kernelagent doctor` checks the sandbox for real and says what is wrong."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from llm_server import ScriptedLLM

pytestmark = pytest.mark.sandbox


def doctor(tmp_path, **env):
    return subprocess.run(
        [sys.executable, "-m", "kernelagent", "doctor"],
        env={**os.environ, "KERNELAGENT_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("sandbox", ["bubblewrap", "docker"])
def test_doctor_passes_on_this_machine(tmp_path, request, sandbox):
    if sandbox == "docker":
        request.getfixturevalue("docker_engine")
    result = doctor(tmp_path, KERNELAGENT_SANDBOX=sandbox)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert all(line.startswith("ok") for line in lines), result.stdout
    assert any("network: blocked" in line for line in lines)
    assert any("limits enforced by" in line for line in lines)
    if sandbox == "docker":
        assert any(line.startswith("ok    Docker engine ") for line in lines), result.stdout
        assert any("kernel image kernelagent/kernel-python:latest" in line for line in lines)
        assert any("memory 1 GiB (no swap), pids 128, cpus 1" in line for line in lines)


def test_doctor_names_the_fix_when_the_kernel_image_is_missing(tmp_path, docker_engine):
    result = doctor(
        tmp_path, KERNELAGENT_SANDBOX="docker", KERNELAGENT_KERNEL_IMAGE="kernelagent/none:0"
    )
    assert result.returncode == 1
    assert "the kernel image kernelagent/none:0 is not on the engine" in result.stdout
    assert "make docker" in result.stdout
    assert "Traceback" not in result.stderr


def test_doctor_names_the_cause_when_the_kernelspec_is_missing(tmp_path):
    result = doctor(tmp_path, KERNELAGENT_KERNEL_NAME="nope")
    assert result.returncode == 1
    assert "FAIL" in result.stdout
    assert "no kernelspec named 'nope'" in result.stdout
    assert "Traceback" not in result.stderr


async def doctor_async(tmp_path, **env):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kernelagent", "doctor",
        env={**os.environ, "KERNELAGENT_DATA_DIR": str(tmp_path), **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.mark.postgres
async def test_doctor_checks_the_backends_and_the_llm(tmp_path, postgres_url, redis_url):
    llm = await ScriptedLLM.start(api_key="sk-right", models=("scripted",))
    try:
        env = {
            "KERNELAGENT_DATABASE_URL": postgres_url,
            "KERNELAGENT_REDIS_URL": redis_url,
            "OPENAI_BASE_URL": llm.base_url,
            "KERNELAGENT_MODEL": "scripted",
        }
        code, out, err = await doctor_async(tmp_path, OPENAI_API_KEY="sk-right", **env)
        assert code == 0, out + err
        for needle in ("database (127.0.0.1:5432", "Redis answers", "storage", "LLM endpoint"):
            assert any(needle in line and line.startswith("ok") for line in out.splitlines()), (
                needle,
                out,
            )
        code, out, _ = await doctor_async(tmp_path, OPENAI_API_KEY="sk-wrong", **env)
        assert code == 1 and "OPENAI_API_KEY" in out
        bad_redis = {**env, "KERNELAGENT_REDIS_URL": "redis://127.0.0.1:1/0"}
        code, out, _ = await doctor_async(tmp_path, OPENAI_API_KEY="sk-right", **bad_redis)
        assert code == 1 and "KERNELAGENT_REDIS_URL" in out
    finally:
        await llm.stop()
