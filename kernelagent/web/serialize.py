"""Domain objects → the JSON shapes of the REST API (SPEC §7)."""

from __future__ import annotations

from typing import Any

from kernelagent.domain import Artifact, FileEntry, Session, Turn


def session_json(
    session: Session, busy: bool = False, usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    extra = {"usage": usage} if usage is not None else {}
    return {
        "id": session.id,
        "title": session.title,
        "kernel_id": session.kernel_id,
        "status": "busy" if busy and session.status == "idle" else session.status,
        "parent_id": session.parent_id,
        "created_at": session.created_at,
        "updated_at": session.updated_at,
        "approval_mode": session.approval_mode,
        **extra,
    }


def turn_json(turn: Turn) -> dict[str, Any]:
    return {
        "id": turn.id,
        "session_id": turn.session_id,
        "status": turn.status,
        "model": turn.model,
        "started_at": turn.started_at,
        "ended_at": turn.ended_at,
        "usage": {
            "prompt_tokens": turn.prompt_tokens,
            "completion_tokens": turn.completion_tokens,
            "cost": turn.cost,
        },
        "error": turn.error,
    }


def artifact_json(artifact: Artifact, url: str) -> dict[str, Any]:
    return {
        "id": artifact.id,
        "cell_id": artifact.cell_id,
        "mime_type": artifact.mime_type,
        "size": artifact.size,
        "sha256": artifact.sha256,
        "url": url,
    }


def file_json(entry: FileEntry) -> dict[str, Any]:
    return {
        "path": entry.path,
        "size": entry.size,
        "sha256": entry.sha256,
        "modified_at": entry.modified_at,
    }
