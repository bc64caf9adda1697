"""Replay a session, branch it at a cell, import a notebook as a session."""

from __future__ import annotations

from kernelagent.errors import InvalidInput, TooLarge
from kernelagent.services.worldlines import WorldlineService
from kernelagent.web.base import ApiHandler, Request
from kernelagent.web.serialize import session_json


class Branch(Request):
    cell_id: str


class ReplayHandler(ApiHandler):
    """``POST …/replay`` → 200 ``{"cells": [{"cell_id", "status", "diff", ...}], "summary"}``."""

    worldlines: WorldlineService

    async def post(self, session_id: str) -> None:
        result = await self.worldlines.replay(self.user, session_id)
        self.write_json(result.json())


class BranchHandler(ApiHandler):
    """``POST …/branch {"cell_id"}`` → 201 the new session."""

    worldlines: WorldlineService

    async def post(self, session_id: str) -> None:
        body = self.json_body(Branch)
        session = await self.worldlines.branch(self.user, session_id, body.cell_id)
        self.write_json(session_json(session), status=201)


class ImportHandler(ApiHandler):
    """``POST /api/v1/notebooks[?replay=true]``: an ``.ipynb`` as the JSON body or as multipart
    field ``file`` → 201 the new session."""

    worldlines: WorldlineService
    upload_limit: int

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
        self.write_json(session_json(session), status=201)
