"""Replay a session, branch it at a cell, import a notebook as a session."""

from __future__ import annotations

import pydantic

from kernelagent.errors import InvalidInput, TooLarge
from kernelagent.services.worldlines import WorldlineService
from kernelagent.web.base import ApiHandler, Param, Request, operation
from kernelagent.web.serialize import Notebook, ReplayReport, SessionBody, session_body


class Branch(Request):
    cell_id: str


class NotebookUpload(pydantic.BaseModel):
    file: bytes = pydantic.Field(json_schema_extra={"contentMediaType": "application/x-ipynb+json"})


class ReplayHandler(ApiHandler):
    """``POST …/replay`` → 200 ``{"cells": [{"cell_id", "status", "diff", ...}], "summary"}``."""

    held = frozenset({"POST"})

    worldlines: WorldlineService

    @operation(
        "replay",
        "Re-execute the record in a fresh kernel and compare each cell",
        "worldlines",
        answer=ReplayReport,
        errors=(404, 503),
        description="Progress is on the event stream (`replay.*`).",
    )
    async def post(self, session_id: str) -> None:
        result = await self.worldlines.replay(self.user, session_id)
        self.write_model(ReplayReport.model_validate(result.json()))


class BranchHandler(ApiHandler):
    """``POST …/branch {"cell_id"}`` → 201 the new session."""

    held = frozenset({"POST"})

    worldlines: WorldlineService

    @operation(
        "branch",
        "A new session: the record up to a cell, its files and kernel state there",
        "worldlines",
        status=201,
        answer=SessionBody,
        body=Branch,
        errors=(404, 503),
    )
    async def post(self, session_id: str) -> None:
        body = self.json_body(Branch)
        session = await self.worldlines.branch(self.user, session_id, body.cell_id)
        self.write_model(session_body(session), status=201)


class ImportHandler(ApiHandler):
    """``POST /api/v1/notebooks[?replay=true]``: an ``.ipynb`` as the JSON body or as multipart
    field ``file`` → 201 the new session."""

    worldlines: WorldlineService
    upload_limit: int

    @operation(
        "importNotebook",
        "Import an `.ipynb` as a new session",
        "worldlines",
        status=201,
        answer=SessionBody,
        bodies={
            "application/json": Notebook,
            "application/x-ipynb+json": Notebook,
            "multipart/form-data": NotebookUpload,
        },
        errors=(400, 413, 422, 503),
        description="422 if the body is not a valid notebook.",
        params=(
            Param(
                "replay",
                "query",
                "Rebuild the kernel state by replaying the cells (`1`/`yes` too)",
                {"type": "boolean", "default": False},
            ),
        ),
    )
    async def post(self) -> None:
        uploads = self.request.files.get("file")
        if uploads:
            raw, name = uploads[0]["body"], uploads[0]["filename"]
        elif self.request.headers.get("Content-Type", "").startswith("multipart/"):
            raise InvalidInput("send the notebook as multipart/form-data field 'file'")
        else:
            raw, name = self.request.body, ""
        if len(raw) > self.upload_limit:
            raise TooLarge(f"the notebook exceeds {self.upload_limit} bytes")
        replay = self.get_query_argument("replay", "false").lower() in {"1", "true", "yes"}
        title = name.removesuffix(".ipynb")
        session = await self.worldlines.import_notebook(self.user, raw, title, replay=replay)
        self.write_model(session_body(session), status=201)
