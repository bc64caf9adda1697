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
NOTE = "[note] "  # a recorded note (a restart, an upload), told to the model as context
PERSON_RAN = "[The user ran this cell"  # a cell a person ran, told to the model as context
NO_RESULT = "(no result: the turn ended before this call was answered)"
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
    return [_finish(m) for m in _answer_every_call(messages)]


def trim(messages: list[Message], budget_tokens: int) -> list[Message]:
    """Fit ``messages`` (system prompt first) into ``budget_tokens``.

    First the oldest tool results are shortened (not those the model is about to read: the
    results of the newest tool calls, in the middle of a turn); then whole exchanges are dropped,
    oldest first, keeping the system prompt, the turn's question (the newest user text) and the
    newest exchange, and never a tool call without its results.
    """
    messages = list(messages)
    if estimate_tokens(messages) <= budget_tokens:
        return messages
    question = max(
        (
            i
            for i, m in enumerate(messages)
            if m["role"] == "user" and isinstance(m["content"], str)
        ),
        default=0,
    )
    newest_calls = max((i for i, m in enumerate(messages) if m.get("tool_calls")), default=-1)
    reading = newest_calls if newest_calls > question else len(messages)
    for i, m in enumerate(messages):
        if i > reading:
            break
        if m["role"] == "tool" and len(m["content"]) > len(OMITTED):
            messages[i] = {**m, "content": OMITTED}
            if estimate_tokens(messages) <= budget_tokens:
                return messages
    groups = _groups(messages)
    keep = {0, question, *groups[-1]}
    dropped: set[int] = set()
    for group in groups:
        if keep.isdisjoint(group):
            dropped.update(group)
            left = [m for i, m in enumerate(messages) if i not in dropped]
            if estimate_tokens(left) <= budget_tokens:
                return left
    return [m for i, m in enumerate(messages) if i not in dropped]


def _is_question(message: Message) -> bool:
    """A user's own words: not context (notes, cells they ran) nor images."""
    content = message["content"]
    return (
        message["role"] == "user"
        and isinstance(content, str)
        and not content.startswith((NOTE, PERSON_RAN))
    )


def _groups(messages: list[Message]) -> list[list[int]]:
    """Indices of messages that go together: an assistant's tool calls with their results."""
    groups: list[list[int]] = []
    for i, m in enumerate(messages):
        if m["role"] == "tool" and groups and messages[groups[-1][0]].get("tool_calls"):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


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


def _answer_every_call(messages: list[Message]) -> list[Message]:
    """Each tool call's result right after its assistant message, as the chat API requires.

    In the record an answer can come later (a cell someone ran, or a note, while ``ask_user``
    waited) or never (the turn was interrupted while it waited): the result moves up, or a
    placeholder stands in for it. Results of no call are dropped.
    """
    results = {m["tool_call_id"]: m for m in messages if m["role"] == "tool"}
    ordered: list[Message] = []
    for m in messages:
        if m["role"] == "tool":
            continue
        ordered.append(m)
        for call in m.get("tool_calls") or ():
            result = results.pop(call["id"], None)
            ordered.append(result or _tool_result(call["id"], NO_RESULT))
    return ordered


def _finish(message: Message) -> Message:
    if message["role"] == "assistant" and not message.get("tool_calls"):
        return {"role": "assistant", "content": message.get("content") or ""}
    return message


def _tool_result(call_id: str, content: str) -> Message:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _context(cell: Cell, budget: int) -> str:
    """A cell the model did not run, told as context."""
    if cell.cell_type == "markdown":
        return NOTE + cell.source.strip("*")
    who = {"gateway": "from JupyterLab", "web": "in the notebook", "mcp": "through MCP"}.get(
        cell.role, ""
    )
    outputs = view_outputs(cell.outputs, budget=budget)
    return f"{PERSON_RAN} {who} themselves]\n```python\n{cell.source}\n```\nOutput:\n{outputs}"
