"""`kernelagent user add` makes a user whose printed token the server accepts."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys

import nbformat
import psutil
import pytest
from llm_server import ScriptedLLM, respond, text, tool_call
from tornado.httpclient import AsyncHTTPClient
from tornado.testing import bind_unused_port

from kernelagent.app import KernelAgentApp


def _free_port() -> int:
    sock, port = bind_unused_port()
    sock.close()
    return port


def cli(tmp_path, *args):
    return subprocess.run(
        [sys.executable, "-m", "kernelagent", *args],
        env={**os.environ, "KERNELAGENT_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_user_add_prints_a_working_token(tmp_path, settings):
    result = cli(tmp_path, "user", "add", "alice")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert len(token) >= 40

    duplicate = cli(tmp_path, "user", "add", "alice")
    assert duplicate.returncode == 1
    assert "alice" in duplicate.stderr or "exists" in duplicate.stderr

    app = KernelAgentApp(dataclasses.replace(settings, data_dir=tmp_path))
    services = await app.start(listen=False)
    try:
        user = await services.auth.authenticate(token)
        assert user is not None and user.name == "alice"
        assert await services.auth.authenticate(token + "x") is None
    finally:
        await app.stop()


async def test_owner_token_is_made_once_and_kept(tmp_path, settings):
    settings = dataclasses.replace(settings, data_dir=tmp_path, token="")
    tokens = []
    for _ in range(2):
        app = KernelAgentApp(settings)
        services = await app.start(listen=False)
        try:
            tokens.append(await app.owner_token())
            assert await services.auth.authenticate(tokens[-1]) is not None
        finally:
            await app.stop()
    assert tokens[0] == tokens[1]
    assert (tmp_path / "owner-token").stat().st_mode & 0o777 == 0o600


@pytest.mark.sandbox
async def test_ask_runs_one_turn_headless_and_writes_the_notebook(tmp_path):
    llm = await ScriptedLLM.start(api_key="sk-cli")
    try:
        llm.script(
            tool_call(
                "run_python", {"code": "import pandas as pd\nint(pd.read_csv('nums.csv').x.sum())"}
            ),
            respond(lambda body: text(f"The sum is {'6' if '6' in str(body) else '?'}.")),
        )
        data = tmp_path / "nums.csv"
        data.write_text("x\n1\n2\n3\n")
        out = tmp_path / "answer.ipynb"
        env = {
            **os.environ,
            "KERNELAGENT_DATA_DIR": str(tmp_path / "data"),
            "OPENAI_API_KEY": "sk-cli",
            "OPENAI_BASE_URL": llm.base_url,
            "KERNELAGENT_MODEL": "scripted",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kernelagent", "ask", "Sum x",
            "--file", str(data), "-o", str(out), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(process.communicate(), 90)
    finally:
        await llm.stop()
    shown = (stdout + stderr).decode()
    assert process.returncode == 0, shown
    assert "The sum is 6." in shown and "read_csv" in shown
    notebook = nbformat.read(out, as_version=4)
    nbformat.validate(notebook)
    roles = [c.metadata["kernelagent"]["role"] for c in notebook.cells]
    assert roles == ["system", "user", "agent", "assistant"]  # the upload, recorded first
    assert notebook.cells[0].metadata["kernelagent"]["upload"]["path"] == "nums.csv"
    assert notebook.cells[2].outputs[0]["data"]["text/plain"] == "6"


def test_ask_without_an_llm_says_what_to_set(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    result = subprocess.run(
        [sys.executable, "-m", "kernelagent", "ask", "hi"],
        env={**env, "KERNELAGENT_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "OPENAI_API_KEY" in result.stderr


@pytest.mark.sandbox
def test_replay_reruns_a_notebook_and_reports_each_cell(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "open('in.txt').read().upper()",
            outputs=[
                nbformat.v4.new_output(
                    "execute_result", {"text/plain": "'HELLO'"}, execution_count=1
                )
            ],
        ),
        nbformat.v4.new_code_cell(
            "print(2 + 2)", outputs=[nbformat.v4.new_output("stream", name="stdout", text="5\n")]
        ),
    ]
    path = tmp_path / "analysis.ipynb"
    nbformat.write(nb, path)
    beside = tmp_path / "files"
    beside.mkdir()
    (beside / "in.txt").write_text("hello")
    env = {**os.environ, "KERNELAGENT_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "kernelagent", "replay", str(path), "--files", str(beside)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 match, 1 differ, 0 error" in result.stdout
    assert '-    "text": "5\\n"' in result.stdout or "differ" in result.stdout


def _kernel_processes() -> set[int]:
    """Sandboxed kernels (and their bwrap) running on this machine now (a zombie, dead but not
    yet reaped by whoever inherited it, runs nothing)."""
    found = set()
    for process in psutil.process_iter(["name", "cmdline", "status"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = " ".join(process.info["cmdline"] or ())
        if process.info["name"] == "bwrap" or "ipykernel_launcher" in cmdline:
            found.add(process.pid)
    return found


@pytest.mark.sandbox
async def test_ready_means_ready_and_nothing_the_server_started_outlives_it(tmp_path):
    """Short server lifetimes, as a user's: start, wait for health, use the token at once, stop
    the process group at once or while the warm pool is still starting kernels."""
    before = _kernel_processes()
    client = AsyncHTTPClient()
    for n, delay in enumerate((0.0, 0.3, 0.6, 1.0, 1.5, 2.5)):
        port = _free_port()
        env = {
            **os.environ,
            "KERNELAGENT_DATA_DIR": str(tmp_path / f"data-{n}"),
            "KERNELAGENT_TOKEN": "lifetime-token",
            "KERNELAGENT_POOL_SIZE": "2",
            "KERNELAGENT_POOL_PREIMPORT": "",
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "kernelagent", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            async with asyncio.timeout(60):
                while True:
                    with contextlib.suppress(OSError):
                        health = await client.fetch(f"{base}/api/v1/health", raise_error=False)
                        if health.code == 200:
                            break
                    await asyncio.sleep(0.05)
            created = await client.fetch(
                f"{base}/api/v1/sessions",
                method="POST",
                body="{}",
                headers={"Authorization": "token lifetime-token"},
                raise_error=False,
            )
            assert created.code == 201, (n, created.code, created.body)
            await asyncio.sleep(delay)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)  # as a terminal or a supervisor does
            try:
                await asyncio.to_thread(server.wait, 60)
            except subprocess.TimeoutExpired:
                server.kill()
                raise
    async with asyncio.timeout(15):
        while left := _kernel_processes() - before:
            await asyncio.sleep(0.2)
    assert not left
