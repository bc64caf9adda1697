"""What the kernel cannot see or touch: host uids, the network, files, /proc, the environment."""

from __future__ import annotations

import os
import socket
import textwrap

import psutil
import pytest

from .conftest import Sandbox, StartSandbox

pytestmark = pytest.mark.sandbox


@pytest.mark.skipif(os.geteuid() != 0, reason="a server not running as root keeps its uid")
async def test_every_kernel_process_runs_as_an_unprivileged_host_uid(sandbox: Sandbox) -> None:
    # a child process too, so that the check covers what the kernel spawns
    result = await sandbox.run(
        "import subprocess; sleeper = subprocess.Popen(['sleep', '30']); print(sleeper.pid)"
    )
    assert result.status == "ok", result.describe()

    provisioner = sandbox.km.provisioner
    host_uid = provisioner.host_uid
    assert host_uid not in (0, os.getuid())
    assert 30000 <= host_uid < 60000
    pids = provisioner.kernel_pids()
    # bubblewrap: outer bwrap, sandbox init, kernel, sleep; Docker: tini, kernel, sleep
    assert len(pids) >= {"bubblewrap": 4, "docker": 3}[sandbox.kind], pids
    procs = [psutil.Process(pid) for pid in pids]
    for proc in procs:
        assert set(proc.uids()) == {host_uid}, (proc.cmdline(), proc.uids())
        assert set(proc.gids()) == {host_uid}, (proc.cmdline(), proc.gids())
    assert "sleep" in [proc.name() for proc in procs]

    await sandbox.run("sleeper.kill(); sleeper.wait()")


async def test_no_network_but_loopback_of_its_own(sandbox: Sandbox) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]

        code = textwrap.dedent(f"""
            import json, socket, time

            def attempt(fn):
                started = time.monotonic()
                try:
                    fn()
                except OSError as e:
                    return [type(e).__name__, e.errno, round(time.monotonic() - started, 2)]
                return ["succeeded", None, round(time.monotonic() - started, 2)]

            print(json.dumps({{
                "host_loopback": attempt(
                    lambda: socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
                ),
                "postgresql": attempt(
                    lambda: socket.create_connection(("127.0.0.1", 5432), timeout=5).close()
                ),
                "redis": attempt(
                    lambda: socket.create_connection(("127.0.0.1", 6379), timeout=5).close()
                ),
                "public": attempt(
                    lambda: socket.create_connection(("1.1.1.1", 443), timeout=5).close()
                ),
                "dns": attempt(lambda: socket.getaddrinfo("pypi.org", 443)),
            }}))
        """)
        result = await sandbox.run(code)
        outcome = result.json()

        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing from the sandbox ever reached the host's loopback

    assert outcome["host_loopback"][0] == "ConnectionRefusedError", outcome
    # the machine's PostgreSQL and Redis listen on the host's loopback, not the sandbox's
    assert outcome["postgresql"][0] == "ConnectionRefusedError", outcome
    assert outcome["redis"][0] == "ConnectionRefusedError", outcome
    assert outcome["public"][0] != "succeeded", outcome
    assert outcome["public"][2] < 2, f"no route should fail fast: {outcome}"
    assert outcome["dns"][0] == "gaierror", outcome


async def test_files_outside_the_workspace_are_invisible(
    start_sandbox: StartSandbox, tmp_path
) -> None:
    secret = tmp_path / "server.db"  # outside the workspace, like the server's database
    secret.write_text("api-token=hunter2")
    secret.chmod(0o644)
    # a file put in the workspace is readable inside
    sandbox = await start_sandbox(files={"data.csv": "a,b\n1,2\n"})
    assert secret.parent != sandbox.workspace

    code = textwrap.dedent(f"""
        import json, os
        try:
            secret = ["read", open({str(secret)!r}).read()]
        except OSError as e:
            secret = [type(e).__name__, str(e)]
        data = open("data.csv").read()
        with open("result.txt", "w") as f:  # the cwd is the workspace
            f.write("written by the kernel")
        print(json.dumps({{"secret": secret, "data": data}}))
    """)
    outcome = (await sandbox.run(code)).json()

    assert outcome["secret"][0] in ("FileNotFoundError", "PermissionError"), outcome
    assert "hunter2" not in str(outcome)
    assert outcome["data"] == "a,b\n1,2\n"
    assert (sandbox.workspace / "result.txt").read_text() == "written by the kernel"


async def test_system_and_python_environment_are_read_only(sandbox: Sandbox) -> None:
    code = textwrap.dedent("""
        import json, os, sys
        outcome = {}
        for directory in ("/usr", "/etc", sys.prefix, sys.base_prefix):
            path = os.path.join(directory, "kernelagent-write-probe")
            try:
                with open(path, "w") as f:
                    f.write("x")
            except OSError as e:
                outcome[directory] = type(e).__name__
            else:
                os.remove(path)  # never leave litter on the host if the test fails
                outcome[directory] = "written"
        try:
            with open("/etc/passwd", "a") as f:
                f.write("")
        except OSError as e:
            outcome["/etc/passwd"] = type(e).__name__
        else:
            outcome["/etc/passwd"] = "written"
        print(json.dumps({"prefix": sys.prefix, "outcome": outcome}))
    """)
    result = (await sandbox.run(code)).json()
    outcome = result["outcome"]
    assert result["prefix"] not in ("/usr", "/usr/local"), "test assumes a venv outside /usr"
    assert len(outcome) >= 4
    for path, what in outcome.items():
        assert what in ("OSError", "PermissionError"), (path, what, outcome)


async def test_no_capabilities_and_no_new_privileges(sandbox: Sandbox) -> None:
    code = textwrap.dedent("""
        import json
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        keys = ("CapEff", "CapPrm", "CapBnd", "NoNewPrivs")
        print(json.dumps({k: status[k].strip() for k in keys}))
    """)
    status = (await sandbox.run(code)).json()
    assert int(status["CapEff"], 16) == 0, status
    assert int(status["CapPrm"], 16) == 0, status
    assert status["NoNewPrivs"] == "1", status


async def test_proc_shows_only_the_sandbox(sandbox: Sandbox) -> None:
    code = (
        "import json, os; "
        "print(json.dumps(sorted(int(p) for p in os.listdir('/proc') if p.isdigit())))"
    )
    pids = (await sandbox.run(code)).json()
    assert 1 <= len(pids) <= 3, pids


SECRETS = {
    "KERNELAGENT_TOKEN": "token-5ecret",
    "KERNELAGENT_DATABASE_URL": "postgresql://agent:pw@db/agent",
    "AWS_SECRET_ACCESS_KEY": "aws-5ecret",
    "OPENAI_API_KEY": "sk-5ecret",
}


async def test_environment_is_built_from_scratch(
    start_sandbox: StartSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    sandbox = await start_sandbox()

    code = (
        "import json, os; "
        "print(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd(), "
        "'home': os.path.expanduser('~')}))"
    )
    outcome = (await sandbox.run(code)).json()
    env = outcome["env"]
    for key, value in SECRETS.items():
        assert key not in env
        assert not any(value in v for v in env.values()), key
    assert env["HOME"] == "/home/sandbox"
    assert outcome["home"] == "/home/sandbox"
    assert outcome["cwd"] == "/workspace"
