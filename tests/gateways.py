"""Real gateways on loopback for the remote-kernel tests: Jupyter Kernel Gateway (from this
environment) and Jupyter Enterprise Gateway (from its own virtualenv, which ``make gateway``
installs, since it pins jupyter_client < 7).

``gateway(kind, home, kernelspecs=…, env=…)`` starts one with a fresh token, waits until its API
answers, yields ``(url, token)`` and stops it (SIGTERM, so it removes its kernels).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.testing import bind_unused_port

EG_VENV = Path(os.environ.get("KERNELAGENT_EG_VENV", "/var/lib/kernelagent-eg/venv"))
# The kernelspec a gateway gets by default: this environment's Python, kernelagent importable.
LOCAL_PYTHON = {
    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "Python 3",
    "language": "python",
}


def unused_port() -> int:
    sock, port = bind_unused_port()
    sock.close()
    return port


def enterprise_gateway_binary() -> Path:
    """Enterprise Gateway's entry point (missing: skipped, or a failure under ``CI=true``)."""
    binary = EG_VENV / "bin" / "jupyter-enterprisegateway"
    if not binary.exists():
        message = f"no Enterprise Gateway at {binary} (make gateway installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


@contextlib.contextmanager
def gateway(
    kind: str, home: Path, kernelspecs: dict[str, dict] | None = None, env: dict | None = None
) -> Iterator[tuple[str, str]]:
    """A running gateway of ``kind`` ("kernel_gateway" or "enterprise_gateway") with its files
    in ``home``; Enterprise Gateway serves ``kernelspecs`` (name → kernel.json) from there."""
    port, token = unused_port(), uuid.uuid4().hex
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "KERNELAGENT"))}
    environ["JUPYTER_RUNTIME_DIR"] = str(home / "runtime")
    listen = ["--ip=127.0.0.1", f"--port={port}"]
    if kind == "kernel_gateway":
        argv = [sys.executable, "-m", "kernel_gateway", f"--KernelGatewayApp.auth_token={token}"]
        argv += [f"--KernelGatewayApp.{option[2:]}" for option in listen]
    else:
        argv = [str(enterprise_gateway_binary()), *listen]
        for name, spec in (kernelspecs or {"python3": LOCAL_PYTHON}).items():
            directory = home / "kernels" / name
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "kernel.json").write_text(json.dumps(spec))
        environ.update({"JUPYTER_PATH": str(home), "EG_AUTH_TOKEN": token})
    environ.update(env or {})
    log_path = home / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=home, env=environ, stdout=log, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(_until_up(url, token, process, log_path))
            yield url, token
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


async def _until_up(url: str, token: str, process: subprocess.Popen, log: Path) -> None:
    client = AsyncHTTPClient()
    async with asyncio.timeout(60):
        while True:
            assert process.poll() is None, log.read_text()
            with contextlib.suppress(OSError):
                response = await client.fetch(
                    f"{url}/api", headers={"Authorization": f"token {token}"}, raise_error=False
                )
                if response.code == 200:
                    return
            await asyncio.sleep(0.1)


async def on_gateway(url: str, token: str, kernel_id: str) -> int:
    """The HTTP status of the gateway's kernel model: 200 while it has the kernel, 404 after."""
    response = await AsyncHTTPClient().fetch(
        f"{url}/api/kernels/{kernel_id}",
        headers={"Authorization": f"token {token}"},
        raise_error=False,
    )
    return response.code
