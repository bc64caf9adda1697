"""The conversation sent to the model, derived from the notebook record (not kept elsewhere).

So a session reloaded from the database, imported or branched continues with the right context.
Cells map to chat messages by their role and ``metadata.kernelagent`` keys:

* ``user`` markdown → a user message; one with ``answer_to`` → the result of that ``ask_user``;
* ``assistant`` markdown and the ``agent`` code cells of the same ``(turn_id, step)`` → one
  assistant message (its text and its tool calls), each code cell then → a ``run_python`` result
  (the budgeted view of its outputs); an ``assistant`` cell with ``tool: ask_user`` → that call;
* a ``system`` cell with ``tool_call_id`` (a rejected cell) → that call's result; other ``system``
  cells (restarts, notes) and the cells people ran (``web``, ``gateway``) → context for the model
  in a user message, since the model did not run them.

Long histories are trimmed to a token budget (estimated at 4 characters a token): the oldest tool
results are shortened first, then the oldest messages dropped, keeping the system prompt and the
latest user message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from kernelagent.domain import Cell
from kernelagent.services.output_views import view_outputs

Message = dict[str, Any]
OMITTED = "[output omitted to save context; run the code again or use read_artifact to see it]"


def estimate_tokens(messages: Sequence[Message]) -> int:
    return sum(len(json.dumps(m, ensure_ascii=False)) for m in messages) // 4


def tool_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def messages_from_record(
    cells: Sequence[Cell], cell_result: Callable[[Cell], str], tool_budget: int
) -> list[Message]:
    """Chat messages (without the system prompt) for ``cells`` in order.

    ``cell_result(cell)`` gives the text the model was (or would be) shown for an agent cell.
    """
    messages: list[Message] = []
    open_step: tuple[str, int] | None = None  # the (turn, step) of the last assistant message
    for cell in cells:
        meta = cell.metadata
        step_key = (meta.get("turn_id", ""), int(meta.get("step", -1)))
        call_id = meta.get("tool_call_id")
        if cell.role == "user":
            if meta.get("answer_to"):
                messages.append(_tool_result(meta["answer_to"], cell.source))
            else:
                messages.append({"role": "user", "content": cell.source})
            open_step = None
        elif cell.role == "assistant":
            assistant = _assistant(messages, step_key, open_step)
            open_step = step_key
            if meta.get("tool") == "ask_user" and call_id:
                call = tool_call(call_id, "ask_user", {"question": cell.source})
                assistant["tool_calls"].append(call)
            else:
                assistant["content"] = (assistant["content"] or "") + cell.source
        elif cell.role == "agent" and cell.cell_type == "code" and call_id:
            assistant = _assistant(messages, step_key, open_step)
            open_step = step_key
            code = meta.get("proposed_code", cell.source)
            assistant["tool_calls"].append(tool_call(call_id, "run_python", {"code": code}))
            messages.append(_tool_result(call_id, cell_result(cell)))
        elif cell.role == "system" and call_id:
            assistant = _assistant(messages, step_key, open_step)
            open_step = step_key
            code = meta.get("proposed_code", "")
            assistant["tool_calls"].append(tool_call(call_id, "run_python", {"code": code}))
            messages.append(_tool_result(call_id, cell.source.strip("*")))
        else:
            messages.append({"role": "user", "content": _context(cell, tool_budget)})
            open_step = None
    return [_finish(m) for m in messages]


def trim(messages: list[Message], budget_tokens: int) -> list[Message]:
    """Fit ``messages`` (system prompt first) into ``budget_tokens``: oldest tool results first."""
    messages = list(messages)
    if estimate_tokens(messages) <= budget_tokens:
        return messages
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=0)
    for i, m in enumerate(messages[:last_user]):
        if m["role"] == "tool" and len(m["content"]) > len(OMITTED):
            messages[i] = {**m, "content": OMITTED}
            if estimate_tokens(messages) <= budget_tokens:
                return messages
    # still too long: drop whole exchanges from the oldest, keeping tool calls with their results
    while estimate_tokens(messages) > budget_tokens and len(messages) > 2:
        drop = 1
        if messages[1].get("tool_calls"):
            while 1 + drop < len(messages) and messages[1 + drop]["role"] == "tool":
                drop += 1
        if 1 + drop >= len(messages):
            break
        del messages[1 : 1 + drop]
        while len(messages) > 2 and messages[1]["role"] == "tool":
            del messages[1]
    return messages


def _assistant(
    messages: list[Message], step_key: tuple[str, int], open_step: tuple[str, int] | None
) -> Message:
    """The assistant message of ``step_key``: the last one if it is that step, else a new one."""
    if open_step == step_key and step_key[1] >= 0:
        for m in reversed(messages):
            if m["role"] == "assistant":
                return m
    message: Message = {"role": "assistant", "content": None, "tool_calls": []}
    messages.append(message)
    return message


def _finish(message: Message) -> Message:
    if message["role"] == "assistant" and not message.get("tool_calls"):
        return {"role": "assistant", "content": message.get("content") or ""}
    return message


def _tool_result(call_id: str, content: str) -> Message:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _context(cell: Cell, budget: int) -> str:
    """A cell the model did not run, told as context."""
    if cell.cell_type == "markdown":
        return f"[note] {cell.source.strip('*')}"
    who = {"gateway": "from JupyterLab", "web": "in the notebook"}.get(cell.role, "")
    outputs = view_outputs(cell.outputs, budget=budget)
    return (
        f"[The user ran this cell {who} themselves]\n```python\n{cell.source}\n```\n"
        f"Output:\n{outputs}"
    )
