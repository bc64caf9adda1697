"""FsspecStorage: the ``Storage`` port (bytes by key) over fsspec — a local directory or S3.

The URL picks the backend: ``file:///abs/dir`` or a plain path is a local directory (created if
missing); ``s3://bucket/prefix`` is S3 through s3fs, with ``endpoint_url`` for S3-compatible
servers (MinIO, moto) and credentials found the way botocore finds them (``AWS_*`` variables,
``~/.aws``, instance roles). Any other fsspec URL works the same way, unchecked.

Contract, identical on every backend so that tests on a directory speak for S3:

* Keys are canonical relative POSIX paths (``artifacts/ab/abcdef…``,
  ``sessions/<id>/files/data.csv``): no leading ``/``, no empty, ``.`` or ``..`` components, no NUL
  bytes, not the reserved staging directory. Anything else is a ``ValueError`` raised before any
  I/O, so a hostile file name can never address a path outside the root.
* A prefix names a directory: ``list("sessions/a")`` sees ``sessions/a/x`` but not
  ``sessions/ab/x``, and ``""`` is the whole root. ``delete_prefix("")`` is refused — wiping every
  session is never what a caller means.
* A write is all or nothing: readers see the old bytes or the new ones, never a torn file. S3 gives
  this per PUT; locally the bytes go to a temporary file in ``.staging/`` under the root (same file
  system), are fsynced, then renamed over the key.
* ``get`` of a missing key raises ``NotFound``; other failures surface as ``KernelAgentError``,
  never as ``OSError`` or botocore exceptions.
* The one difference: S3 lets ``a`` and ``a/b`` both be keys, a directory does not (the second
  write fails). Callers keep files and directories apart, as the key layout above does.

fsspec calls are blocking, so each runs in a worker thread (``asyncio.to_thread``); s3fs then drives
its own event loop thread. Directory listings are never cached, since another replica may have
written since, and each storage has its own filesystem instance (no fsspec instance cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import tempfile
from collections.abc import Callable
from typing import TypeVar

import fsspec
from botocore.exceptions import BotoCoreError, ClientError
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from kernelagent.errors import KernelAgentError, NotFound

STAGING = ".staging"  # local temporary files, renamed into place; never a key

# s3fs maps most S3 errors to OSError subclasses, but not connection failures and the like
DRIVER_ERRORS: tuple[type[Exception], ...] = (OSError, BotoCoreError, ClientError)

T = TypeVar("T")


def content_key(sha256: str) -> str:
    """Where content-addressed bytes live: ``artifacts/<sha[:2]>/<sha>``."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a lowercase hex sha256: {sha256!r}")
    return f"artifacts/{sha256[:2]}/{sha256}"


def check_key(key: str, *, prefix: bool = False) -> str:
    """Return ``key`` if it is a canonical relative POSIX key, else raise ValueError.

    With ``prefix=True`` the empty string (the whole root) and a trailing ``/`` are accepted too;
    the result has no trailing ``/``.
    """
    if not isinstance(key, str):
        raise ValueError(f"storage key must be a string, not {type(key).__name__}")
    if "\0" in key:
        raise ValueError(f"storage key contains a NUL byte: {key!r}")
    if key.startswith("/"):
        raise ValueError(f"storage key must be relative: {key!r}")
    if prefix:
        key = key.removesuffix("/")
        if key == "":
            return key
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"storage key must be a normalised relative path: {key!r}")
    if parts[0] == STAGING:
        raise ValueError(f"storage key uses the reserved directory {STAGING!r}: {key!r}")
    return key


class FsspecStorage:
    """The ``Storage`` port on an fsspec filesystem rooted at ``url``."""

    def __init__(self, url: str, endpoint_url: str | None = None):
        protocol, _ = fsspec.core.split_protocol(url)
        options: dict[str, object] = {"skip_instance_cache": True}
        if protocol in ("s3", "s3a"):
            options["use_listings_cache"] = False
            if endpoint_url:
                options["client_kwargs"] = {"endpoint_url": endpoint_url}
        elif endpoint_url:
            raise ValueError(f"endpoint_url is only for s3:// storage, not {url!r}")
        elif protocol in (None, "file", "local"):
            url = os.path.abspath(url.removeprefix("file://").removeprefix("local://"))
        self.url = url
        self.fs, root = url_to_fs(url, **options)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/")
        if self.local:
            os.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"FsspecStorage({self.url!r})"

    def path(self, key: str) -> str:
        """The filesystem path of a key (or of a prefix's directory when ``key`` is ``""``)."""
        return f"{self.root}/{key}" if key else self.root

    async def put(self, key: str, data: bytes) -> None:
        path = self.path(check_key(key))
        data = bytes(data)
        if self.local:
            await self._run("write", key, self._put_local, path, data)
        else:
            await self._run("write", key, self.fs.pipe_file, path, data)

    async def get(self, key: str) -> bytes:
        path = self.path(check_key(key))
        data = await self._run("read", key, self.fs.cat_file, path)
        return bytes(data)

    async def exists(self, key: str) -> bool:
        path = self.path(check_key(key))
        return bool(await self._run("check", key, self.fs.isfile, path))

    async def list(self, prefix: str) -> list[str]:
        prefix = check_key(prefix, prefix=True)
        return await self._run("list", prefix, self._list, prefix)

    async def delete(self, key: str) -> None:
        """Remove one object; a missing one is not an error."""
        check_key(key)
        await self._run("delete", key, self._delete, key)

    def _delete(self, key: str) -> None:
        path = self.path(key)
        if self.fs.isfile(path):
            self.fs.rm(path)

    async def delete_prefix(self, prefix: str) -> None:
        prefix = check_key(prefix, prefix=True)
        if not prefix:
            raise ValueError("refusing to delete the whole storage root (empty prefix)")
        await self._run("delete", prefix, self._delete_prefix, prefix)

    # blocking helpers, run in a worker thread

    def _put_local(self, path: str, data: bytes) -> None:
        staging = self.path(STAGING)
        os.makedirs(staging, exist_ok=True)
        os.makedirs(posixpath.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=staging, prefix="put-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _list(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        root = self.root + "/"
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        keys = []
        for path in found:
            path = path.rstrip("/")
            # a prefix names a directory: the object *at* the prefix is not under it
            if not path.startswith(base + "/" if prefix else root):
                continue
            key = path[len(root) :]
            if key.split("/", 1)[0] != STAGING:
                keys.append(key)
        return sorted(keys)

    def _delete_prefix(self, prefix: str) -> None:
        if self.local:
            path = self.path(prefix)
            if self.fs.isdir(path):
                self.fs.rm(path, recursive=True)
            return
        paths = [self.path(key) for key in self._list(prefix)]
        if paths:
            self.fs.rm(paths)

    async def _run(self, op: str, key: str, func: Callable[..., T], *args: object) -> T:
        try:
            return await asyncio.to_thread(func, *args)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            # reading a "directory", or below a file, is a missing key locally as on S3
            if op == "read":
                raise NotFound(f"no stored object {key!r}") from None
            # writing into a bucket that does not exist, or below a file (local)
            raise KernelAgentError(f"storage {op} of {key!r} in {self.url} failed: {e}") from e
        except DRIVER_ERRORS as e:
            raise KernelAgentError(f"storage {op} of {key!r} in {self.url} failed: {e}") from e
