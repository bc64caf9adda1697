"""Session workspaces: uploads, listing, downloads, the mirror to storage, artifacts, signed URLs.

A session's workspace is what its kernel sees as ``/workspace``, reached through the kernel port's
workspace operations (``Workspaces``: list, read, write, remove), never by a host path. Every path
a client names is confined to it: absolute paths, ``..``, NUL bytes and backslashes are refused
with InvalidInput before anything is written (the backend never follows a symlink). After each
cell, files that changed (by size and mtime, then content hash) are copied to storage under
``sessions/<id>/files/``; rich outputs go to storage once per content under
``artifacts/<sha[:2]>/<sha>``.

Workspace history: every file version is also kept once per content under
``blobs/<sha[:2]>/<sha>``, and ``snapshot()`` stores the workspace's manifest (path → sha256, JSON)
the same way, so "the files as they were after cell N" is one small object, and an unchanged
file is never stored twice. ``restore()`` puts a workspace back to a manifest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import time
from pathlib import PurePosixPath

from itsdangerous import BadSignature, Signer

from kernelagent.domain import Artifact, FileEntry, Session, new_id, now
from kernelagent.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    TooLarge,
    WorkspaceFull,
    WorkspaceOffline,
)
from kernelagent.services.outputs import ArtifactBlob
from kernelagent.services.ports import Database, Storage, Workspaces
from kernelagent.services.recording import Recorder

log = logging.getLogger(__name__)


def artifact_key(sha256: str) -> str:
    return f"artifacts/{sha256[:2]}/{sha256}"


def file_key(session_id: str, path: str) -> str:
    return f"sessions/{session_id}/files/{path}"


def blob_key(sha256: str) -> str:
    return f"blobs/{sha256[:2]}/{sha256}"


async def keep_blob(storage: Storage, sha256: str, data: bytes) -> None:
    """Store content under its sha256 once: a version already there is not written again."""
    key = blob_key(sha256)
    if not await storage.exists(key):
        await storage.put(key, data)


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
        workspaces: Workspaces,
        recorder: Recorder,
        secret: str,
        upload_limit: int,
        signed_url_ttl: int,
        workspace_limit: int = 0,
    ):
        self.workspace_limit = workspace_limit  # bytes a workspace may hold (0: no limit)
        self.db = db
        self.storage = storage
        self.workspaces = workspaces
        self.recorder = recorder
        self.upload_limit = upload_limit
        self.read_limit = upload_limit  # largest file downloaded or mirrored
        self.signed_url_ttl = signed_url_ttl
        self.signer = Signer(secret, salt="kernelagent.artifact")
        self._seen: dict[str, dict[str, _Seen]] = {}
        self._used: dict[str, int] = {}  # session id → bytes in its workspace, as last listed

    @staticmethod
    def confine(path: str) -> str:
        """The normalised relative path for ``path``, or InvalidInput.

        Names only: whether a component is a symlink is decided by the backend at the moment
        of use (it never follows one), since the kernel can change it at any time.
        """
        if not path or "\0" in path or "\\" in path:
            raise InvalidInput("a file path must be non-empty, without NUL bytes or backslashes")
        pure = PurePosixPath(path)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts:
            raise InvalidInput(f"path {path!r} must be relative and stay inside the workspace")
        return pure.as_posix()

    async def upload(self, session: Session, path: str, data: bytes) -> FileEntry:
        """Write ``data`` into the workspace and storage, and record the upload at this point of
        the notebook (replay re-applies it there); returns its entry."""
        if len(data) > self.upload_limit:
            raise TooLarge(f"upload of {len(data)} bytes exceeds the limit of {self.upload_limit}")
        rel = self.confine(path)
        if self.workspace_limit:
            entries = await self.db.files.list(session.id)
            used = sum(e.size for e in entries if e.path != rel)
            if used + len(data) > self.workspace_limit:
                raise WorkspaceFull(
                    f"the workspace holds {used:,} bytes; with {len(data):,} more it would pass "
                    f"its limit (KERNELAGENT_WORKSPACE_LIMIT={self.workspace_limit:,}): delete "
                    "files first",
                    "KERNELAGENT_WORKSPACE_LIMIT",
                    self.workspace_limit,
                )
        with contextlib.suppress(WorkspaceOffline):  # its kernel gets it when it comes back
            await self.workspaces.write_file(session.id, rel, data)
        entry = FileEntry(rel, len(data), hashlib.sha256(data).hexdigest(), now())
        await self.storage.put(file_key(session.id, rel), data)
        await keep_blob(self.storage, entry.sha256, data)
        await self.db.files.upsert(session.id, entry)
        snapshot = await self.snapshot(session)
        await self.recorder.markdown(
            session.id,
            "system",
            f"*Uploaded `{entry.path}` ({entry.size:,} bytes).*",
            {
                "upload": {"path": entry.path, "size": entry.size, "sha256": entry.sha256},
                "snapshot": snapshot,
            },
        )
        return entry

    async def list(self, session: Session) -> list[FileEntry]:
        """The files of the workspace as they are now (mirrored first, so hashes are current)."""
        await self.mirror(session)
        return await self.db.files.list(session.id)

    async def read(self, session: Session, path: str) -> tuple[bytes, str]:
        rel = self.confine(path)
        try:
            return await self.workspaces.read_file(session.id, rel, self.read_limit), rel
        except WorkspaceOffline:  # as last mirrored
            if not await self.storage.exists(file_key(session.id, rel)):
                raise NotFound(f"no file {rel!r} in this session") from None
            return await self.storage.get(file_key(session.id, rel)), rel

    async def mirror(self, session: Session) -> bool:
        """Copy files that changed since the last mirror to storage; drop deleted ones.

        True when anything was added, changed or deleted (a new snapshot is due)."""
        seen = self._seen.get(session.id)
        if seen is None:
            seen = self._seen[session.id] = {
                e.path: _Seen(-1, -1, e.sha256) for e in await self.db.files.list(session.id)
            }
        try:
            current = await self.workspaces.list_files(session.id)
        except WorkspaceOffline:
            return False  # its files stay as last mirrored
        self._used[session.id] = sum(stat.size for stat in current.values())
        changed = False
        for rel in set(seen) - set(current):
            changed = True
            await self.db.files.delete(session.id, rel)
            await self.storage.delete(file_key(session.id, rel))
            del seen[rel]
        for rel, stat in sorted(current.items()):
            known = seen.get(rel)
            if known and known.size == stat.size and known.mtime_ns == stat.mtime_ns:
                continue
            if stat.size > self.read_limit:
                log.warning("not mirroring %s of session %s: %d bytes", rel, session.id, stat.size)
                continue
            try:
                data = await self.workspaces.read_file(session.id, rel, self.read_limit)
            except (NotFound, TooLarge, WorkspaceOffline):
                continue  # changed under our feet (the kernel is still writing); next time
            sha = hashlib.sha256(data).hexdigest()
            if not (known and known.sha256 == sha):
                modified = dt.datetime.fromtimestamp(stat.mtime_ns / 1e9, dt.UTC)
                entry = FileEntry(rel, len(data), sha, modified)
                await self.storage.put(file_key(session.id, rel), data)
                await keep_blob(self.storage, sha, data)
                await self.db.files.upsert(session.id, entry)
                changed = True
            seen[rel] = _Seen(stat.size, stat.mtime_ns, sha)
        return changed

    def over_limit(self, session_id: str) -> str | None:
        """What to tell the session's user and model when its workspace, as last mirrored,
        holds more than its limit; None when it does not."""
        used = self._used.get(session_id, 0)
        if not self.workspace_limit or used <= self.workspace_limit:
            return None
        return (
            f"The workspace holds {used:,} bytes, more than its limit "
            f"(KERNELAGENT_WORKSPACE_LIMIT={self.workspace_limit:,}): delete or shrink files. "
            "Uploads are refused until it is under the limit again."
        )

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

    async def snapshot(self, session: Session) -> str:
        """Store the workspace's manifest (as mirrored); returns its id (the manifest's sha256)."""
        entries = await self.db.files.list(session.id)
        manifest = json.dumps({e.path: e.sha256 for e in entries}, sort_keys=True).encode()
        sha = hashlib.sha256(manifest).hexdigest()
        await keep_blob(self.storage, sha, manifest)
        return sha

    async def manifest(self, snapshot: str | None) -> dict[str, str]:
        """path → sha256 of a snapshot (``None``: the empty workspace)."""
        if not snapshot:
            return {}
        return json.loads(await self.storage.get(blob_key(snapshot)))  # type: ignore[no-any-return]

    async def place(self, workspace: str, path: str, sha256: str) -> None:
        """Write one stored file version into a workspace (replay re-applying an upload)."""
        data = await self.storage.get(blob_key(sha256))
        await self.workspaces.write_file(workspace, self.confine(path), data)

    async def restore(self, session: Session, snapshot: str | None) -> None:
        """Make the session's workspace hold exactly the files of ``snapshot``, then mirror."""
        wanted = await self.manifest(snapshot)
        await self.mirror(session)  # so the hashes below describe the files as they are
        current = await self.workspaces.list_files(session.id)
        for rel in set(current) - set(wanted):
            await self.workspaces.remove_file(session.id, rel)
        have = {e.path: e.sha256 for e in await self.db.files.list(session.id)}
        for rel, sha in wanted.items():
            if rel not in current or have.get(rel) != sha:
                await self.place(session.id, rel, sha)
        await self.mirror(session)

    async def forget(self, session_id: str) -> None:
        """Drop a deleted session's workspace and cache (its storage prefix is removed by the
        caller)."""
        self._seen.pop(session_id, None)
        self._used.pop(session_id, None)
        with contextlib.suppress(WorkspaceOffline):
            await self.workspaces.remove_workspace(session_id)
