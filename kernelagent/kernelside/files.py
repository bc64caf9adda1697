"""The workspace seen from inside the kernel, for a server that cannot see the kernel's files.

A kernel on another machine (a remote gateway, a pod) has a filesystem the server cannot read.
The server's ``KernelFiles`` adapter calls these functions in ``user_expressions`` of silent,
history-less execute requests: nothing is recorded, nothing is printed, no name is bound, and
``eval`` runs no IPython input transformation (a multi-megabyte chunk is one string literal).

Paths are relative to ``root`` (the kernel's workspace) and never follow a symlink; only regular
files count, as on the server's side (``adapters/workspace_io.py``). A write goes to a hidden
part file, chunk by chunk, and becomes the file only once the whole content's sha256 matches.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import stat

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
PART = ".kernelagent-part-"  # prefix of files being written; never listed
CHUNK_COMM = "kernelagent.files"  # the comm id of the messages that carry a read's bytes


class Verbatim:
    """A text answer whose ``text/plain`` is the text itself: no quotes, no escapes, and none of
    IPython's pretty-printing of a multi-megabyte ``str`` (four times slower)."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def listing(root: str) -> Verbatim:
    """JSON ``{path: [size, mtime_ns]}`` of the regular files under ``root``."""
    found: dict[str, list[int]] = {}
    if os.path.isdir(root):
        for dirpath, _, filenames, dir_fd in os.fwalk(root, follow_symlinks=False):
            rel_dir = os.path.relpath(dirpath, root)
            for name in filenames:
                if name.startswith(PART):
                    continue
                try:
                    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                    found[rel] = [info.st_size, info.st_mtime_ns]
    return Verbatim(json.dumps(found))


def size(root: str, rel: str) -> int:
    """The size of regular file ``rel`` (FileNotFoundError if it is none)."""
    with _file(root, rel) as fd:
        return os.fstat(fd).st_size


def send(root: str, rel: str, offset: int, length: int) -> int:
    """Send up to ``length`` bytes of ``rel`` from ``offset`` to the requester, as the binary
    buffer of a ``comm_msg`` (comm ``CHUNK_COMM``, which no frontend opens, so one ignores it)
    on iopub, parented to this request; returns how many. Bytes as they are: no base64, and a
    gateway passes a binary buffer through untouched."""
    with _file(root, rel) as fd:
        data = os.pread(fd, length, offset)
    kernel = _kernel()
    kernel.session.send(
        kernel.iopub_socket,
        "comm_msg",
        {"comm_id": CHUNK_COMM, "data": {"offset": offset}},
        parent=kernel.get_parent("shell"),
        ident=f"comm-{CHUNK_COMM}".encode(),
        buffers=[data],
    )
    return len(data)


def write(root: str, rel: str, part: str, offset: int, sha256: str = "", data: str = "") -> int:
    """Write a chunk at ``offset`` of the part file ``part``; with ``sha256`` (the last chunk),
    check the whole part and rename it to ``rel``. Returns the part's size.

    The chunk is ``data`` (base64), or else the request's binary buffer: taken from the message
    as it came, a chunk costs no compilation of a literal and no base64."""
    chunk = base64.b64decode(data) if data else _request_buffer()
    *dirs, name = rel.split("/")
    _check_name(name)
    dir_fd = _open_dir(root, dirs, create=True)
    try:
        tmp = PART + part
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd
        )
        try:
            os.pwrite(fd, chunk, offset)
            written = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if sha256:
            if _sha256(tmp, dir_fd) != sha256:
                os.unlink(tmp, dir_fd=dir_fd)
                raise ValueError(f"{rel!r}: the content did not arrive intact (sha256 differs)")
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return written
    finally:
        os.close(dir_fd)


def digest(root: str, rel: str) -> Verbatim:
    """The sha256 of ``rel`` as it is now."""
    with _file(root, rel) as fd:
        hasher = hashlib.sha256()
        offset = 0
        while chunk := os.pread(fd, 1024 * 1024, offset):
            hasher.update(chunk)
            offset += len(chunk)
        return Verbatim(hasher.hexdigest())


def abandon(root: str, rel: str, part: str) -> None:
    """Remove a part file whose write failed half-way."""
    *dirs, _ = rel.split("/")
    with contextlib.suppress(OSError):
        dir_fd = _open_dir(root, dirs)
        try:
            os.unlink(PART + part, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)


def remove(root: str, rel: str) -> None:
    """Remove ``rel`` (never following symlinks); a missing file is no error."""
    *dirs, name = rel.split("/")
    try:
        dir_fd = _open_dir(root, dirs)
    except OSError:
        return
    try:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(name, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def clear(root: str) -> None:
    """Remove everything under ``root`` (the workspace itself stays)."""
    if not os.path.isdir(root):
        return
    for dirpath, dirnames, filenames, dir_fd in os.fwalk(root, topdown=False):
        for name in filenames:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
        for name in dirnames:
            with contextlib.suppress(OSError):
                if os.path.islink(os.path.join(dirpath, name)):
                    os.unlink(name, dir_fd=dir_fd)
                else:
                    os.rmdir(name, dir_fd=dir_fd)


@contextlib.contextmanager
def _file(root: str, rel: str):  # type: ignore[no-untyped-def]
    *dirs, name = rel.split("/")
    dir_fd = _open_dir(root, dirs)
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileNotFoundError(f"{rel!r} is not a regular file")
        yield fd
    finally:
        os.close(fd)


def _open_dir(root: str, parts: list[str], create: bool = False) -> int:
    fd = os.open(root, DIR_FLAGS)
    try:
        for part in parts:
            _check_name(part)
            try:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _request_buffer() -> bytes | memoryview:
    """The first binary buffer of the execute request being handled (ipykernel's parent
    message), empty if it has none."""
    buffers = _kernel().get_parent("shell").get("buffers") or [b""]
    return buffers[0]  # type: ignore[no-any-return]


def _kernel():  # type: ignore[no-untyped-def]
    """The ipykernel kernel running this code (these functions serve a kernel's requests)."""
    from IPython import get_ipython

    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:
        raise RuntimeError("kernelagent.kernelside.files runs in an ipykernel kernel")
    return kernel


def _check_name(name: str) -> None:
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"not a relative path component: {name!r}")


def _sha256(name: str, dir_fd: int) -> str:
    digest = hashlib.sha256()
    fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    try:
        while chunk := os.read(fd, 1024 * 1024):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()
