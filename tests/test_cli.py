"""`kernelagent user add` makes a user whose printed token the server accepts."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

from kernelagent.app import KernelAgentApp


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
