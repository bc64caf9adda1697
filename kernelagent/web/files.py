"""Workspace files (upload, list, download) and artifacts (by id, or by expiring signed URL)."""

from __future__ import annotations

import mimetypes
from urllib.parse import quote

import pydantic

from kernelagent.errors import InvalidInput, NotFound
from kernelagent.services.files import FileService
from kernelagent.services.ports import Database
from kernelagent.services.sessions import SessionService
from kernelagent.web.base import ApiHandler, Param, operation
from kernelagent.web.serialize import FileBody, FileList, file_body


class Upload(pydantic.BaseModel):
    file: bytes
    path: str | None = pydantic.Field(
        default=None, description="where in the workspace; default: the file's name"
    )


class FilesHandler(ApiHandler):
    held = frozenset({"GET", "POST"})
    sessions: SessionService
    files: FileService

    @operation("listFiles", "The workspace's files", "files", answer=FileList, errors=(404,))
    async def get(self, session_id: str) -> None:
        session = await self.sessions.get(self.user, session_id)
        entries = await self.files.list(session)
        self.write_model(FileList(files=[file_body(e) for e in entries]))

    @operation(
        "uploadFile",
        "Upload a file into the workspace (recorded in the notebook)",
        "files",
        status=201,
        answer=FileBody,
        bodies={"multipart/form-data": Upload},
        errors=(400, 404, 413, 429),
        description="`path` may also be given as a query parameter.",
        params=(Param("path", "query", "Where in the workspace"),),
    )
    async def post(self, session_id: str) -> None:
        session = await self.sessions.get(self.user, session_id)
        uploads = self.request.files.get("file")
        if not uploads:
            raise InvalidInput("send the file as multipart/form-data field 'file'")
        upload = uploads[0]
        # raw bytes: tornado's get_argument would silently turn control characters into spaces
        raw = self.request.arguments.get("path", [b""])[0]
        try:
            path = raw.decode() or upload["filename"]
        except UnicodeDecodeError:
            raise InvalidInput("path must be UTF-8") from None
        entry = await self.files.upload(session, path, upload["body"])
        self.write_model(file_body(entry), status=201)


class FileHandler(ApiHandler):
    held = frozenset({"GET"})
    sessions: SessionService
    files: FileService

    @operation(
        "downloadFile",
        "A workspace file's bytes (as an attachment)",
        "files",
        answer=bytes,
        answer_type="*/*",
        errors=(400, 404),
        path_params={
            "path": "Relative to the workspace; may span segments (`/` sent as is or as `%2F`)"
        },
    )
    async def get(self, session_id: str, path: str) -> None:
        session = await self.sessions.get(self.user, session_id)
        data, rel = await self.files.read(session, path)
        self.set_header("Content-Type", mimetypes.guess_type(rel)[0] or "application/octet-stream")
        name = rel.rsplit("/", 1)[-1]
        self.set_header("Content-Disposition", f"attachment; filename*=UTF-8''{quote(name)}")
        self.finish(data)


class ArtifactHandler(ApiHandler):
    """The artifact's bytes: for its owner, or for anyone holding a valid signed URL."""

    files: FileService
    db: Database

    async def prepare(self) -> None:
        self.auth_required = self.get_query_argument("signature", None) is None
        await super().prepare()

    @operation(
        "getArtifact",
        "An artifact's bytes, with its type",
        "files",
        answer=bytes,
        answer_type="*/*",
        errors=(403, 404),
        description="For its owner, or for anyone with a valid signed URL "
        "(`?expires=&signature=`, as an artifact's `url` gives). HTML and SVG are sent with "
        "`Content-Security-Policy: sandbox`.",
        params=(
            Param("expires", "query", "Unix time the signed URL expires", {"type": "integer"}),
        ),
        security=("signedUrl",),
    )
    async def get(self, artifact_id: str) -> None:
        signature = self.get_query_argument("signature", None)
        if signature is not None:
            self.files.verify_signature(
                artifact_id, self.get_query_argument("expires", ""), signature
            )
        artifact = await self.db.artifacts.get(artifact_id)
        if artifact is None:
            raise NotFound("no such artifact")
        if signature is None:
            session = await self.db.sessions.get(artifact.session_id)
            if session is None or session.user_id != self.user.id:
                raise NotFound("no such artifact")
        data = await self.files.artifact_bytes(artifact)
        self.set_header("Content-Type", artifact.mime_type)
        self.set_header("X-Content-Type-Options", "nosniff")
        if artifact.mime_type in {"text/html", "image/svg+xml"}:
            # kernel-made HTML/SVG must not run with this origin's cookies
            self.set_header("Content-Security-Policy", "sandbox")
        self.set_header("Cache-Control", "private, max-age=3600")
        self.finish(data)
