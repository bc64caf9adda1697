"""``kernelagent doctor``: does everything the server needs work here, and if not, why.

It starts a real sandboxed kernel with the server's settings and checks, from inside, what the
sandbox promises (uid, no network, private PIDs, limits); then the database, Redis, storage and
the LLM endpoint as configured. Each line says ok or what is wrong and which setting to change.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable

from kernelagent.adapters.db import open_database
from kernelagent.adapters.kernels import LocalKernels
from kernelagent.adapters.llm import OpenAIChat
from kernelagent.adapters.locks import make_locks
from kernelagent.adapters.storage import FsspecStorage
from kernelagent.config import Settings
from kernelagent.errors import KernelAgentError

INSIDE_PROBE = r"""
import json as _json, os as _os, resource as _r, socket as _s
def _probe():
    out = {"uid": _os.getuid(), "pids": len([p for p in _os.listdir('/proc') if p.isdigit()])}
    try:
        _s.create_connection(("1.1.1.1", 443), timeout=2).close(); out["network"] = "reachable"
    except OSError as e:
        out["network"] = f"blocked ({e.__class__.__name__})"
    out["data_limit"] = _r.getrlimit(_r.RLIMIT_DATA)[0]
    out["nproc_limit"] = _r.getrlimit(_r.RLIMIT_NPROC)[0]
    try:
        open("/usr/.kernelagent-doctor", "w")
        out["usr"] = "writable"
    except OSError:
        out["usr"] = "read-only"
    print(_json.dumps(out))
_probe(); del _probe
"""


async def run_doctor(settings: Settings) -> int:
    """Print one line per check; exit status 0 when everything needed works."""
    failures = 0

    def report(ok: bool, what: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'}  {what}", flush=True)

    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        report(True, f"data directory {settings.data_dir} is writable")
    except OSError as e:
        report(False, f"data directory {settings.data_dir}: {e} (set KERNELAGENT_DATA_DIR)")

    await _check_backends(settings, report)
    if settings.unsafe_no_sandbox:
        report(False, "KERNELAGENT_UNSAFE_NO_SANDBOX is set: kernels run without a sandbox")
    kernels = LocalKernels(settings)
    kernels.mkm.log.setLevel(logging.CRITICAL)  # a failed start is reported below, in one line
    workspace = f".doctor-{secrets.token_hex(6)}"
    started = time.perf_counter()
    try:
        kernel_id = await kernels.start(workspace)
    except KernelAgentError as e:
        report(False, f"sandboxed kernel ({kernels.kernel_name}, {settings.sandbox}): {e}")
        await kernels.close()
        return 1
    try:
        elapsed = time.perf_counter() - started
        report(True, f"sandboxed kernel {kernels.kernel_name} started in {elapsed:.2f} s")
        provisioner = kernels.manager(kernel_id).provisioner
        mechanism = getattr(provisioner, "limit_mechanism", lambda: "none")()
        report(True, f"limits enforced by {mechanism}")
        describe = getattr(provisioner, "describe", None)  # the Docker sandbox reads them back
        for line in await asyncio.to_thread(describe) if describe else []:
            report(True, line)
        client = kernels.client(kernel_id)
        lines: list[str] = []

        def collect(msg: dict) -> None:  # type: ignore[type-arg]
            if msg["msg_type"] == "stream":
                lines.append(msg["content"]["text"])

        try:
            await client.execute_interactive(INSIDE_PROBE, timeout=30, output_hook=collect)
        finally:
            client.stop_channels()
        inside = json.loads("".join(lines))
        report(inside["uid"] != 0, f"kernel runs as uid {inside['uid']} inside the sandbox")
        host_uid = kernels.kernel_uid(kernel_id)
        report(host_uid != 0, f"kernel runs as host uid {host_uid}")
        report(inside["network"].startswith("blocked"), f"network: {inside['network']}")
        report(inside["pids"] <= 3, f"kernel sees {inside['pids']} processes (own PID namespace)")
        report(inside["usr"] == "read-only", f"/usr is {inside['usr']}")
        report(inside["data_limit"] > 0, f"RLIMIT_DATA {inside['data_limit']} bytes")
    finally:
        await kernels.close()
        await kernels.remove_workspace(workspace)
    return 1 if failures else 0


async def _check_backends(settings: Settings, report: Callable[[bool, str], None]) -> None:
    """Database, Redis, storage and the LLM, each as configured."""
    where = settings.database_url.split("@")[-1] if settings.database_url else "SQLite"
    try:
        db = await open_database(settings.database)
        await db.users.list()
        await db.close()
        report(True, f"database ({where}) answers and is migrated")
    except Exception as e:  # noqa: BLE001 - each failure is reported, not raised
        report(False, f"database ({where}): {e} (KERNELAGENT_DATABASE_URL)")
    if settings.redis_url:
        locks = make_locks(settings.redis_url)
        try:
            async with locks.hold("kernelagent-doctor", timeout=5):
                pass
            report(True, "Redis answers (locks)")
        except Exception as e:  # noqa: BLE001
            report(False, f"Redis: {e} (KERNELAGENT_REDIS_URL)")
        finally:
            await locks.close()
    try:
        storage = FsspecStorage(settings.storage, endpoint_url=settings.s3_endpoint_url or None)
        key = f"doctor/{time.time_ns()}"
        await storage.put(key, b"ok")
        if await storage.get(key) != b"ok":
            raise KernelAgentError("what was written did not read back")
        await storage.delete(key)
        report(True, f"storage {settings.storage} is readable and writable")
    except Exception as e:  # noqa: BLE001
        report(False, f"storage {settings.storage}: {e} (KERNELAGENT_STORAGE_URL)")
    if not settings.llm_configured:
        report(True, "no LLM configured (OPENAI_API_KEY): the agent is off, cells run directly")
        return
    llm = OpenAIChat(settings.openai_api_key, settings.openai_base_url, timeout=15, retries=0)
    try:
        report(True, f"LLM endpoint answers: {await llm.check(settings.model)}")
    except KernelAgentError as e:
        report(False, f"LLM: {e}")
    finally:
        await llm.close()
