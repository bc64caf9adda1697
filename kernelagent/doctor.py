"""``kernelagent doctor``: does the sandbox work on this machine, and if not, why.

It starts a real sandboxed kernel with the server's settings and checks, from inside, what the
sandbox promises (uid, no network, private PIDs, limits); each line says ok or what is wrong.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from kernelagent.adapters.kernels import LocalKernels
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

    if settings.unsafe_no_sandbox:
        report(False, "KERNELAGENT_UNSAFE_NO_SANDBOX is set: kernels run without a sandbox")
    kernels = LocalKernels(settings)
    workspace = Path(tempfile.mkdtemp(prefix="kernelagent-doctor-"))
    started = time.perf_counter()
    try:
        kernel_id = await kernels.start(workspace)
    except KernelAgentError as e:
        report(False, f"sandboxed kernel ({kernels.kernel_name}): {e}")
        await kernels.close()
        return 1
    try:
        elapsed = time.perf_counter() - started
        report(True, f"sandboxed kernel {kernels.kernel_name} started in {elapsed:.2f} s")
        provisioner = kernels.manager(kernel_id).provisioner
        mechanism = getattr(provisioner, "limit_mechanism", lambda: "none")()
        report(True, f"limits enforced by {mechanism}")
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
    return 1 if failures else 0
