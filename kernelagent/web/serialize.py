"""Domain objects → the JSON shapes of the REST API (SPEC §7)."""

from __future__ import annotations

from typing import Any

from kernelagent.domain import Artifact, FileEntry, Session


def session_json(session: Session, busy: bool = False) -> dict[str, Any]:
    return {
        "id": session.id,
        "title": session.title,
        "kernel_id": session.kernel_id,
        "status": "busy" if busy and session.status == "idle" else session.status,
        "parent_id": session.parent_id,
        "created_at": session.created_at,
        "updated_at": session.updated_at,
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
