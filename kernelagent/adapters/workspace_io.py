"""File I/O inside a workspace that a hostile kernel controls, done safely by a (root) server.

The sandboxed kernel can swap any path component for a symlink, a FIFO or a directory at any
moment, so no check on a path name may be trusted for a later use of that name. Instead:

* every walk starts from an fd of the workspace root and opens each component relative to its
  parent with ``O_NOFOLLOW`` (``os.fwalk`` with ``follow_symlinks=False`` for scans);
* a file is opened ``O_NOFOLLOW | O_NONBLOCK`` and ``fstat`` of that fd must say "regular file"
  (a FIFO cannot block, a symlink cannot lead out) before a byte is read, and reads are capped;
* a write goes to a fresh random name created with ``O_EXCL``, is ``fchown``-ed to the
  workspace's owner, then renamed over the target within the same directory fd.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from kernelagent.errors import InvalidInput, NotFound, TooLarge

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# a file being written; never listed, mirrored or snapshotted (a SIGKILL may leave one behind)
UPLOAD_TEMP = ".kernelagent-upload-"
CHUNK = 1024 * 1024


@contextlib.contextmanager
def _fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _open_dir(root: Path, parts: tuple[str, ...], create: bool = False) -> int:
    """An fd of ``root/parts`` reached without following any symlink; creates dirs if asked."""
    fd = os.open(root, DIR_FLAGS)
    owner = os.fstat(fd)
    try:
        for part in parts:
            try:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
                if os.geteuid() == 0:
                    os.fchown(child, owner.st_uid, owner.st_gid)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_file(root: Path, rel: str, limit: int) -> bytes:
    """The bytes of regular file ``rel`` under ``root``: NotFound, or TooLarge past ``limit``."""
    *dirs, name = rel.split("/")
    try:
        with (
            _fd(_open_dir(root, tuple(dirs))) as dir_fd,
            _fd(os.open(name, READ_FLAGS, dir_fd=dir_fd)) as fd,
        ):
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise NotFound(f"{rel!r} is not a regular file")
            if info.st_size > limit:
                raise TooLarge(f"{rel!r} is larger than {limit} bytes")
            return _read_capped(fd, rel, limit)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"no file {rel!r} in this session") from None
    except OSError as e:  # ELOOP: a symlink where a file or directory was expected
        raise NotFound(f"no regular file {rel!r} in this session ({e.strerror})") from None


def _read_capped(fd: int, rel: str, limit: int) -> bytes:
    chunks, total = [], 0
    while chunk := os.read(fd, CHUNK):
        total += len(chunk)
        if total > limit:
            raise TooLarge(f"{rel!r} is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def write_file(root: Path, rel: str, data: bytes) -> None:
    """Write ``data`` to ``rel`` under ``root`` atomically, owned by the workspace's owner."""
    *dirs, name = rel.split("/")
    try:
        dir_fd = _open_dir(root, tuple(dirs), create=True)
    except (NotADirectoryError, OSError) as e:
        raise InvalidInput(f"cannot write {rel!r}: a parent is not a directory ({e})") from None
    with _fd(dir_fd):
        owner = os.stat(root)
        tmp = f"{UPLOAD_TEMP}{secrets.token_hex(8)}"
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd
        )
        try:
            with _fd(fd):
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if os.geteuid() == 0:
                    os.fchown(fd, owner.st_uid, owner.st_gid)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            if isinstance(e, IsADirectoryError | NotADirectoryError):
                raise InvalidInput(f"cannot write {rel!r}: it is a directory") from None
            raise


def remove_file(root: Path, rel: str) -> None:
    """Remove ``rel`` under ``root`` (never following symlinks); a missing file is no error."""
    *dirs, name = rel.split("/")
    try:
        dir_fd = _open_dir(root, tuple(dirs), create=False)
    except OSError:
        return
    with _fd(dir_fd), contextlib.suppress(FileNotFoundError, IsADirectoryError):
        os.unlink(name, dir_fd=dir_fd)


def scan(root: Path, on_dir: Callable[[int], None] | None = None) -> dict[str, tuple[int, int]]:
    """Regular files under ``root``, never following symlinks: relative path → (size, mtime_ns).
    ``on_dir`` is given each directory's fd as it is walked (to watch it)."""
    found: dict[str, tuple[int, int]] = {}
    if not root.is_dir():
        return found
    for dirpath, _, filenames, dir_fd in os.fwalk(root, follow_symlinks=False):
        if on_dir is not None:
            on_dir(dir_fd)
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if name.startswith(UPLOAD_TEMP):  # an upload still being written, or one cut off
                continue
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode):
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                found[rel] = (info.st_size, info.st_mtime_ns)
    return found
