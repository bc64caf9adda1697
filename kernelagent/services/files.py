"""Session workspaces: uploads, listing, downloads, the mirror to storage, artifacts, signed URLs.

A workspace is ``<workspaces>/<session id>`` on the host, ``/workspace`` in the sandbox. Every path
a client names is confined to it: absolute paths, ``..``, NUL bytes and symlinks leading out are
refused with InvalidInput before anything is written. After each cell, files that changed (by
size and mtime, then content hash) are copied to storage under ``sessions/<id>/files/``; rich
outputs go to storage once per content under ``artifacts/<sha[:2]>/<sha>``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import os
import time
from pathlib import Path, PurePosixPath

from itsdangerous import BadSignature, Signer

from kernelagent.domain import Artifact, FileEntry, Session, new_id, now
from kernelagent.errors import Forbidden, InvalidInput, NotFound, TooLarge
from kernelagent.services.outputs import ArtifactBlob
from kernelagent.services.ports import Database, Storage


def artifact_key(sha256: str) -> str:
    return f"artifacts/{sha256[:2]}/{sha256}"


def file_key(session_id: str, path: str) -> str:
    return f"sessions/{session_id}/files/{path}"


def notebook_key(session_id: str) -> str:
    return f"sessions/{session_id}/notebook.ipynb"


@dataclasses.dataclass
class _Seen:
    size: int
    mtime_ns: int
    sha256: str


class FileService:
    """Workspace files and artifacts of sessions; see the module docstring for the rules."""

    def __init__(
        self,
        db: Database,
        storage: Storage,
        workspaces_dir: Path,
        secret: str,
        upload_limit: int,
        signed_url_ttl: int,
    ):
        self.db = db
        self.storage = storage
        self.workspaces_dir = workspaces_dir
        self.upload_limit = upload_limit
        self.signed_url_ttl = signed_url_ttl
        self.signer = Signer(secret, salt="kernelagent.artifact")
        self._seen: dict[str, dict[str, _Seen]] = {}

    def workspace(self, session_id: str) -> Path:
        return self.workspaces_dir / session_id

    def confine(self, session_id: str, path: str) -> tuple[Path, str]:
        """The host path and normalised relative path for ``path``, or InvalidInput."""
        if not path or "\0" in path or "\\" in path:
            raise InvalidInput("a file path must be non-empty, without NUL bytes or backslashes")
        pure = PurePosixPath(path)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts:
            raise InvalidInput(f"path {path!r} must be relative and stay inside the workspace")
        root = self.workspace(session_id).resolve()
        target = root.joinpath(*pure.parts)
        # every existing component must resolve inside the workspace (no symlink leads out)
        probe = target
        while not probe.exists() and probe != root:
            probe = probe.parent
        if probe.exists() and not probe.resolve().is_relative_to(root):
            raise InvalidInput(f"path {path!r} leads outside the workspace")
        if target.is_symlink():
            raise InvalidInput(f"path {path!r} is a symbolic link")
        return target, pure.as_posix()

    async def upload(self, session: Session, path: str, data: bytes) -> FileEntry:
        """Write ``data`` into the workspace and storage; returns its entry."""
        if len(data) > self.upload_limit:
            raise TooLarge(f"upload of {len(data)} bytes exceeds the limit of {self.upload_limit}")
        target, rel = self.confine(session.id, path)
        root = self.workspace(session.id)
        await asyncio.to_thread(_write_owned, root, target, data)
        entry = FileEntry(rel, len(data), hashlib.sha256(data).hexdigest(), now())
        await self.storage.put(file_key(session.id, rel), data)
        await self.db.files.upsert(session.id, entry)
        stat = target.stat()
        self._seen.setdefault(session.id, {})[rel] = _Seen(
            stat.st_size, stat.st_mtime_ns, entry.sha256
        )
        return entry

    async def list(self, session: Session) -> list[FileEntry]:
        """The files of the workspace as they are now (mirrored first, so hashes are current)."""
        await self.mirror(session)
        return await self.db.files.list(session.id)

    async def read(self, session: Session, path: str) -> tuple[bytes, str]:
        target, rel = self.confine(session.id, path)
        if not target.is_file():
            raise NotFound(f"no file {path!r} in this session")
        return await asyncio.to_thread(target.read_bytes), rel

    async def mirror(self, session: Session) -> list[FileEntry]:
        """Copy files that changed since the last mirror to storage; drop deleted ones."""
        root = self.workspace(session.id)
        seen = self._seen.setdefault(session.id, {})
        if not seen:
            for entry in await self.db.files.list(session.id):
                seen[entry.path] = _Seen(-1, -1, entry.sha256)
        current = await asyncio.to_thread(_scan, root)
        changed: list[FileEntry] = []
        for rel, (size, mtime_ns) in current.items():
            known = seen.get(rel)
            if known and known.size == size and known.mtime_ns == mtime_ns:
                continue
            data = await asyncio.to_thread((root / rel).read_bytes)
            sha = hashlib.sha256(data).hexdigest()
            seen[rel] = _Seen(size, mtime_ns, sha)
            if known and known.sha256 == sha:
                continue
            modified = dt.datetime.fromtimestamp(mtime_ns / 1e9, dt.UTC)
            entry = FileEntry(rel, len(data), sha, modified)
            await self.storage.put(file_key(session.id, rel), data)
            await self.db.files.upsert(session.id, entry)
            changed.append(entry)
        for rel in set(seen) - set(current):
            del seen[rel]
            await self.db.files.delete(session.id, rel)
        return changed

    async def store_artifacts(
        self, session: Session, cell_id: str, blobs: list[ArtifactBlob]
    ) -> list[Artifact]:
        """Store each blob once (content-addressed) and record it for this cell."""
        artifacts = []
        for blob in blobs:
            key = artifact_key(blob.sha256)
            if not await self.storage.exists(key):
                await self.storage.put(key, blob.data)
            artifact = Artifact(
                new_id(), session.id, cell_id, blob.mime_type, len(blob.data), blob.sha256, now()
            )
            await self.db.artifacts.add(artifact)
            artifacts.append(artifact)
        return artifacts

    async def artifact_bytes(self, artifact: Artifact) -> bytes:
        return await self.storage.get(artifact_key(artifact.sha256))

    def signed_url(self, artifact_id: str) -> str:
        expires = int(time.time()) + self.signed_url_ttl
        signature = self.signer.get_signature(f"{artifact_id}:{expires}").decode()
        return f"/api/v1/artifacts/{artifact_id}?expires={expires}&signature={signature}"

    def verify_signature(self, artifact_id: str, expires: str, signature: str) -> None:
        """Forbidden unless the signature is ours and has not expired."""
        try:
            valid = self.signer.verify_signature(f"{artifact_id}:{expires}", signature)
        except BadSignature:
            valid = False
        if not valid:
            raise Forbidden("invalid signature")
        if not expires.isdigit() or int(expires) < time.time():
            raise Forbidden("this link has expired")

    async def forget(self, session_id: str) -> None:
        """Drop a deleted session's cache (its storage prefix is removed by the caller)."""
        self._seen.pop(session_id, None)


def _write_owned(root: Path, target: Path, data: bytes) -> None:
    """Write atomically; as root, give the file (and new dirs) to the workspace's owner."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.upload-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    if os.geteuid() == 0:
        owner = root.stat()
        rel = target.relative_to(root)
        for part in [rel, *rel.parents][:-1]:  # the file and each directory below the root
            os.lchown(root / part, owner.st_uid, owner.st_gid)


def _scan(root: Path) -> dict[str, tuple[int, int]]:
    """Regular files under ``root`` (symlinks not followed): relative path → (size, mtime_ns)."""
    found: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            full = os.path.join(dirpath, name)
            try:
                stat = os.lstat(full)
            except FileNotFoundError:
                continue
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            found[os.path.relpath(full, root)] = (stat.st_size, stat.st_mtime_ns)
    return found
