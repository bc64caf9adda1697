"""The chat sent to the model, rebuilt from the notebook record, and trimmed to a token budget."""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

import pytest

from kernelagent.domain import Cell
from kernelagent.services.conversation import (
    OMITTED,
    estimate_tokens,
    messages_from_record,
    trim,
)

Message = dict[str, Any]

# -- helpers ------------------------------------------------------------------------------------

_index = itertools.count()


def cell(
    role: str,
    source: str,
    *,
    cell_type: str | None = None,
    outputs: list[dict[str, Any]] | None = None,
    **metadata: Any,
) -> Cell:
    """A cell as the record holds it; code for agent/web/gateway, markdown otherwise."""
    n = next(_index)
    ran = role in ("agent", "web", "gateway")
    return Cell(
        id=f"cell-{n}",
        session_id="s1",
        index=n,
        cell_type=cell_type or ("code" if ran else "markdown"),  # type: ignore[arg-type]
        source=source,
        role=role,  # type: ignore[arg-type]
        outputs=outputs or [],
        execution_count=1 if ran else None,
        status="ok",
        started_at=None,
        duration_ms=None,
        metadata=metadata,
    )


def stream(text: str) -> dict[str, Any]:
    return {"output_type": "stream", "name": "stdout", "text": text}


def result(text: str) -> dict[str, Any]:
    return {
        "output_type": "execute_result",
        "execution_count": 1,
        "data": {"text/plain": text},
        "metadata": {},
    }


def cell_result(c: Cell) -> str:
    """What the model was shown for an agent cell (the service's describe_cell)."""
    return f"RESULT of {c.id}"


def build(*cells: Cell, tool_budget: int = 4000) -> list[Message]:
    return messages_from_record(list(cells), cell_result, tool_budget)


def arguments(call: dict[str, Any]) -> Any:
    return json.loads(call["function"]["arguments"])


def assert_valid_chat(messages: list[Message]) -> None:
    """What the chat completions API accepts: a system prompt only first; each assistant
    message with tool calls followed at once by exactly one tool message per call (in any
    order) before any other message; no tool message anywhere else."""
    i = 0
    while i < len(messages):
        m = messages[i]
        role = m["role"]
        assert role in ("system", "user", "assistant", "tool"), (i, m)
        assert role != "system" or i == 0, f"message {i}: a system message after the first"
        assert role != "tool", f"message {i}: a tool message that answers no preceding call: {m}"
        if role == "assistant" and "tool_calls" in m:
            calls = m["tool_calls"]
            assert calls, f"message {i}: an empty tool_calls list"
            ids = [c["id"] for c in calls]
            assert len(set(ids)) == len(ids), f"message {i}: duplicate call ids {ids}"
            for call in calls:
                assert call["type"] == "function"
                assert isinstance(arguments(call), dict)
            assert m["content"] is None or isinstance(m["content"], str)
            answered = []
            i += 1
            while i < len(messages) and messages[i]["role"] == "tool":
                assert isinstance(messages[i]["content"], str)
                answered.append(messages[i]["tool_call_id"])
                i += 1
            assert sorted(answered) == sorted(ids), (
                f"calls {ids} answered by {answered} before message {i}"
            )
            continue
        if role == "assistant":
            assert isinstance(m["content"], str), f"message {i}: no content and no tool calls"
        if role == "user":
            assert isinstance(m["content"], str | list)
        i += 1


@pytest.mark.parametrize(
    "broken",
    [
        [{"role": "tool", "tool_call_id": "x", "content": "orphan"}],
        [
            {"role": "assistant", "content": None, "tool_calls": []},
        ],
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "user", "content": "no answer first"},
            {"role": "tool", "tool_call_id": "a", "content": "late"},
        ],
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "a", "content": "once"},
            {"role": "tool", "tool_call_id": "a", "content": "twice"},
        ],
    ],
    ids=["orphan-tool", "empty-calls", "answer-after-user", "answered-twice"],
)
def test_the_validity_check_catches_what_the_api_refuses(broken):
    with pytest.raises(AssertionError):
        assert_valid_chat(broken)


# -- the record, message by message ---------------------------------------------------------------


def test_a_user_message():
    assert build(cell("user", "Summarise sales.csv", turn_id="t1")) == [
        {"role": "user", "content": "Summarise sales.csv"}
    ]


def test_text_and_two_code_cells_of_one_step_are_one_assistant_message():
    load = "import pandas as pd\ndf = pd.read_csv('sales.csv')  # Ümlaut ✓"
    look = "df.describe()"
    text = cell("assistant", "Let me look at the data.", turn_id="t1", step=0)
    first = cell("agent", load, turn_id="t1", step=0, tool_call_id="call_a", attempt=1)
    second = cell("agent", look, turn_id="t1", step=0, tool_call_id="call_b", attempt=1)
    messages = build(cell("user", "Summarise", turn_id="t1"), text, first, second)

    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
    assistant = messages[1]
    assert assistant["content"] == "Let me look at the data."
    assert [c["id"] for c in assistant["tool_calls"]] == ["call_a", "call_b"]
    for call, code in zip(assistant["tool_calls"], (load, look), strict=True):
        assert call["type"] == "function"
        assert call["function"]["name"] == "run_python"
        assert arguments(call) == {"code": code}
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": "call_a", "content": cell_result(first)},
        {"role": "tool", "tool_call_id": "call_b", "content": cell_result(second)},
    ]
    assert_valid_chat(messages)


def test_code_cells_of_different_steps_are_separate_assistant_messages():
    messages = build(
        cell("user", "go", turn_id="t1"),
        cell("agent", "a = 1", turn_id="t1", step=0, tool_call_id="c0"),
        cell("agent", "a + 1", turn_id="t1", step=1, tool_call_id="c1"),
        cell("assistant", "a is 2", turn_id="t1", step=2),
    )
    assert [m["role"] for m in messages] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    assert messages[1]["content"] is None and messages[3]["content"] is None
    assert messages[-1] == {"role": "assistant", "content": "a is 2"}
    assert_valid_chat(messages)


def test_edited_code_is_called_with_the_proposal_and_answered_with_the_run():
    ran = cell(
        "agent", "print(2)", turn_id="t1", step=0, tool_call_id="c", proposed_code="print(1)"
    )
    messages = build(cell("user", "go", turn_id="t1"), ran)
    assert arguments(messages[1]["tool_calls"][0]) == {"code": "print(1)"}  # what the model wrote
    assert messages[2] == {"role": "tool", "tool_call_id": "c", "content": cell_result(ran)}


def test_ask_user_and_its_answer_are_a_call_and_its_result():
    messages = build(
        cell("user", "Which region sells most?", turn_id="t1"),
        cell(
            "assistant",
            "Which column is the revenue?",
            turn_id="t1",
            step=0,
            tool_call_id="call_q",
            tool="ask_user",
        ),
        cell("user", "amount", turn_id="t1", answer_to="call_q"),
    )
    assert messages[1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_q",
                    "type": "function",
                    "function": {
                        "name": "ask_user",
                        "arguments": json.dumps({"question": "Which column is the revenue?"}),
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_q", "content": "amount"},
    ]
    assert_valid_chat(messages)


def test_ask_user_with_text_in_the_same_step_keeps_both():
    messages = build(
        cell("user", "go", turn_id="t1"),
        cell("assistant", "I see two candidates.", turn_id="t1", step=0),
        cell("assistant", "Which one?", turn_id="t1", step=0, tool_call_id="q", tool="ask_user"),
        cell("user", "the second", turn_id="t1", answer_to="q"),
    )
    assert messages[1]["content"] == "I see two candidates."
    assert arguments(messages[1]["tool_calls"][0]) == {"question": "Which one?"}
    assert messages[2] == {"role": "tool", "tool_call_id": "q", "content": "the second"}
    assert_valid_chat(messages)


def test_a_rejected_proposal_is_a_call_with_the_proposed_code_and_a_result():
    proposed = "import shutil; shutil.rmtree('/workspace')"
    messages = build(
        cell("user", "clean up", turn_id="t1"),
        cell(
            "system",
            "*The user rejected this cell; it did not run.*",
            turn_id="t1",
            step=0,
            tool_call_id="call_r",
            attempt=1,
            proposed_code=proposed,
            rejected=True,
        ),
    )
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    [call] = messages[1]["tool_calls"]
    assert (call["id"], call["function"]["name"]) == ("call_r", "run_python")
    assert arguments(call) == {"code": proposed}
    assert messages[2]["tool_call_id"] == "call_r"
    assert "rejected" in messages[2]["content"] and "did not run" in messages[2]["content"]
    assert not messages[2]["content"].startswith("*")
    assert_valid_chat(messages)


@pytest.mark.parametrize(
    ("role", "where"), [("web", "in the notebook"), ("gateway", "from JupyterLab")]
)
def test_cells_people_ran_are_context_in_a_user_message(role, where):
    code = "print('hello from ' + 'them')\n41 + 1"
    ran = cell(role, code, outputs=[stream("hello from them\n"), result("42")])
    [message] = build(ran)
    assert message["role"] == "user"
    content = message["content"]
    assert where in content
    assert f"```python\n{code}\n```" in content
    assert "hello from them" in content and "42" in content  # a view of its outputs
    assert '"output_type"' not in content  # a view, not the raw nbformat


def test_context_outputs_are_held_to_the_tool_budget():
    ran = cell("web", "print('x' * 10_000)", outputs=[stream("x" * 10_000 + "\n")])
    [message] = build(ran, tool_budget=300)
    assert len(message["content"]) < 300 + 200  # the view's budget plus the code and framing


def test_a_system_note_is_a_user_note():
    [message] = build(cell("system", "*The kernel was restarted; its variables are gone.*"))
    assert message == {
        "role": "user",
        "content": "[note] The kernel was restarted; its variables are gone.",
    }


def full_record() -> list[Cell]:
    """Two turns as the agent records them, with people's cells and a restart in between."""
    return [
        cell("user", "Load sales.csv and summarise it", turn_id="t1"),
        cell("assistant", "Let me look at the data.", turn_id="t1", step=0),
        cell("agent", "df = pd.read_csv('sales.csv')", turn_id="t1", step=0, tool_call_id="a"),
        cell(
            "agent", "df.describe()", turn_id="t1", step=0, tool_call_id="b", outputs=[result("…")]
        ),
        cell(
            "assistant",
            "Which column is revenue?",
            turn_id="t1",
            step=1,
            tool_call_id="q",
            tool="ask_user",
        ),
        cell("user", "amount", turn_id="t1", answer_to="q"),
        cell("system", "*rejected*", turn_id="t1", step=2, tool_call_id="r", proposed_code="rm()"),
        cell(
            "agent",
            "df.amount.sum()",
            turn_id="t1",
            step=3,
            tool_call_id="c",
            outputs=[result("42")],
        ),
        cell("assistant", "Total revenue is 42.", turn_id="t1", step=4),
        cell("web", "df.head()", outputs=[stream("hello from web\n")]),
        cell("gateway", "print(len(df))", outputs=[stream("3\n")]),
        cell("system", "*The kernel was restarted; its variables are gone.*"),
        cell("user", "Now plot revenue by month", turn_id="t2"),
        cell("assistant", "Plotting.", turn_id="t2", step=0),
        cell("agent", "df.plot()", turn_id="t2", step=0, tool_call_id="d"),
        cell("assistant", "Done.", turn_id="t2", step=1),
    ]


def test_a_whole_record_is_a_valid_chat_in_order():
    messages = build(*full_record())
    assert_valid_chat(messages)
    shape = [(m["role"], [c["id"] for c in m.get("tool_calls", [])]) for m in messages]
    assert shape == [
        ("user", []),
        ("assistant", ["a", "b"]),
        ("tool", []),
        ("tool", []),
        ("assistant", ["q"]),
        ("tool", []),
        ("assistant", ["r"]),
        ("tool", []),
        ("assistant", ["c"]),
        ("tool", []),
        ("assistant", []),
        ("user", []),  # web
        ("user", []),  # gateway
        ("user", []),  # restart note
        ("user", []),
        ("assistant", ["d"]),
        ("tool", []),
        ("assistant", []),
    ]
    assert [m["tool_call_id"] for m in messages if m["role"] == "tool"] == [
        "a",
        "b",
        "q",
        "r",
        "c",
        "d",
    ]


def test_cells_people_run_between_an_agents_cells_keep_the_chat_valid():
    """The session lock serves cells in arrival order, so a JupyterLab cell may land between
    two cells of one agent step, or between a step's text and its (approved) cell."""
    messages = build(
        cell("user", "go", turn_id="t1"),
        cell("assistant", "Two things.", turn_id="t1", step=0),
        cell("agent", "x = 1", turn_id="t1", step=0, tool_call_id="a"),
        cell("gateway", "print('meanwhile')", outputs=[stream("meanwhile\n")]),
        cell("agent", "y = 2", turn_id="t1", step=0, tool_call_id="b"),
        cell("assistant", "One more.", turn_id="t1", step=1),
        cell("web", "z = 3"),
        cell("agent", "x + y", turn_id="t1", step=1, tool_call_id="c"),
    )
    assert_valid_chat(messages)
    calls = [c["id"] for m in messages for c in m.get("tool_calls", [])]
    assert calls == ["a", "b", "c"]


@pytest.mark.parametrize("between", ["unanswered", "web-cell-before-answer", "note-before-answer"])
def test_an_ask_user_call_is_always_answered_at_once(between):
    """An ``ask_user`` is recorded when asked and its answer when given. A turn interrupted (or a
    server restarted) while it waits leaves the call with no answer in the record; a cell someone
    runs (web, JupyterLab) or a restart note recorded while it waits lands between the call and
    its answer. Either way the rebuilt chat has an assistant tool call not followed by its tool
    message, which the chat API refuses (400) — every later turn of the session fails."""
    cells = [
        cell("user", "go", turn_id="t1"),
        cell("assistant", "Which file?", turn_id="t1", step=0, tool_call_id="q", tool="ask_user"),
    ]
    if between == "unanswered":
        cells.append(cell("user", "never mind, do something else", turn_id="t2"))
    else:
        if between == "web-cell-before-answer":
            cells.append(cell("web", "import os; os.listdir()", outputs=[result("['a.csv']")]))
        else:
            cells.append(cell("system", "*The kernel was restarted; its variables are gone.*"))
        cells.append(cell("user", "a.csv", turn_id="t1", answer_to="q"))
    assert_valid_chat(build(*cells))


# -- trim ---------------------------------------------------------------------------------------

SYSTEM: Message = {"role": "system", "content": "You are a data analyst. " * 20}
BIG = "row,value\n" + "1,2\n" * 1000  # a long tool result (4k characters)


def call(call_id: str, code: str = "df.head()") -> Message:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": "run_python", "arguments": json.dumps({"code": code})},
            }
        ],
    }


def tool(call_id: str, content: str = BIG) -> Message:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def three_turns() -> list[Message]:
    """At the start of the third turn: the last message is the user's."""
    return [
        SYSTEM,
        {"role": "user", "content": "first question"},
        call("a"),
        tool("a"),
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
        {
            **call("b"),
            "tool_calls": [*call("b")["tool_calls"], *call("c")["tool_calls"]],
        },
        tool("b"),
        tool("c"),
        {"role": "assistant", "content": "second answer"},
        {"role": "user", "content": "[The user ran this cell in the notebook themselves] …"},
        {"role": "user", "content": "third question"},
    ]


def mid_turn() -> list[Message]:
    """Steps into the only turn: the newest messages are the agent's calls and results."""
    return [
        SYSTEM,
        {"role": "user", "content": "the question"},
        call("a"),
        tool("a"),
        call("b"),
        tool("b"),
        call("c"),
        tool("c"),
    ]


def tools_of(messages: list[Message]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "tool"]


def test_trim_leaves_a_history_that_fits_alone():
    messages = three_turns()
    before = copy.deepcopy(messages)
    assert trim(messages, estimate_tokens(messages)) == before
    assert trim(messages, 1) != before
    assert messages == before  # the caller's list and messages are not changed


def test_trim_shortens_the_oldest_tool_results_first():
    messages = three_turns()
    one = copy.deepcopy(messages)
    one[3]["content"] = OMITTED
    two = copy.deepcopy(one)
    two[7]["content"] = OMITTED

    assert tools_of(trim(messages, estimate_tokens(one))) == [OMITTED, BIG, BIG]
    assert tools_of(trim(messages, estimate_tokens(two))) == [OMITTED, OMITTED, BIG]
    trimmed = trim(messages, estimate_tokens(two) - 1)
    assert len(trimmed) == len(messages)  # shortened, nothing dropped yet
    assert tools_of(trimmed) == [OMITTED, OMITTED, OMITTED]
    assert_valid_chat(trimmed)


@pytest.mark.parametrize("budget", [0, 1, 50, 200])
def test_a_tiny_budget_keeps_the_system_prompt_and_the_last_user_message(budget):
    trimmed = trim(three_turns(), budget)
    assert trimmed[0] == SYSTEM
    assert trimmed[-1] == {"role": "user", "content": "third question"}
    assert_valid_chat(trimmed)


@pytest.mark.parametrize("history", [three_turns, mid_turn])
def test_dropping_never_leaves_a_tool_result_without_its_call(history):
    messages = history()
    total = estimate_tokens(messages)
    for budget in range(0, total + 50, 25):
        trimmed = trim(messages, budget)
        assert trimmed[0] == SYSTEM, budget
        assert_valid_chat(trimmed)
        # what is kept is the turn's question and the newest part of the rest, results
        # shortened at most
        question = [m for m in messages if m["role"] == "user"][-1]
        assert question in trimmed, budget

        def shape(ms, question=question):
            return [
                (m["role"], m.get("tool_call_id"), m.get("content") if m["role"] != "tool" else "")
                for m in ms
                if m != question
            ]

        kept = shape(trimmed[1:])
        rest = shape(messages[1:])
        assert kept == rest[len(rest) - len(kept) :], budget


def test_dropping_goes_until_it_fits_or_only_the_last_message_is_left():
    messages = three_turns()
    total = estimate_tokens(messages)
    for budget in range(0, total, 25):
        trimmed = trim(messages, budget)
        assert estimate_tokens(trimmed) <= budget or trimmed == [SYSTEM, messages[-1]], budget


def test_mid_turn_the_question_survives_and_old_results_are_shortened():
    """In a turn's later steps (``_loop`` trims ``[system, *history]`` before every model call)
    the newest user message is the turn's question and everything after it is the turn's own
    calls and results. ``trim`` shortens only tool results *before* the last user message, so
    none here; then it drops from the oldest, the question first: the model goes on without
    its task, and the result is still over the budget."""
    messages = mid_turn()
    shortened = copy.deepcopy(messages)
    shortened[3]["content"] = shortened[5]["content"] = OMITTED
    budget = estimate_tokens(shortened)  # fits once the two oldest results are shortened
    trimmed = trim(messages, budget)
    assert {"role": "user", "content": "the question"} in trimmed
    assert estimate_tokens(trimmed) <= budget
    assert trimmed == shortened
