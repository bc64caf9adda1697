"""The agent's tools: each declared once, as a name, a description and a pydantic model of its
arguments. The JSON Schema the model sees is generated from the model, and a call's arguments are
validated against it, so a bad call goes back to the model as a tool error naming the field.

Example::

    tool, args = parse_call(ToolCall("call_1", "run_python", '{"code": "1 + 1"}'))
    assert isinstance(args, RunPython) and args.code == "1 + 1"
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

import pydantic

from kernelagent.domain import ToolCall


class ToolArguments(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", str_strip_whitespace=False)


class RunPython(ToolArguments):
    code: str = pydantic.Field(min_length=1, description="The cell's Python code")

    @pydantic.field_validator("code")
    @classmethod
    def _not_blank(cls, code: str) -> str:
        if not code.strip():
            raise ValueError("the code is empty")
        return code


class AskUser(ToolArguments):
    question: str = pydantic.Field(min_length=1, description="What to ask, in one message")

    @pydantic.field_validator("question")
    @classmethod
    def _stripped(cls, question: str) -> str:
        if not question.strip():
            raise ValueError("the question is empty")
        return question.strip()


class ReadArtifact(ToolArguments):
    artifact_id: str = pydantic.Field(description="The id shown as `artifact <id>`")
    view: Literal["text", "html", "data"] | None = pydantic.Field(
        default=None,
        description="'text' (the default for most outputs), 'html' for raw HTML, 'data' for a "
        "chart's data",
    )


def _without_titles(schema: Any) -> Any:
    """pydantic's schema without the ``title`` keys (noise in every prompt)."""
    if isinstance(schema, dict):
        return {
            k: _without_titles(v)
            for k, v in schema.items()
            if not (k == "title" and isinstance(v, str))
        }
    if isinstance(schema, list):
        return [_without_titles(v) for v in schema]
    return schema


@dataclasses.dataclass(frozen=True)
class Tool:
    name: str
    description: str
    arguments: type[ToolArguments]
    example: dict[str, Any]  # told to the model when its call was malformed

    def schema(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry."""
        parameters = _without_titles(self.arguments.model_json_schema())
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": parameters,
            },
        }


TOOLS: tuple[Tool, ...] = (
    Tool(
        "run_python",
        "Run Python code as the next cell of the persistent IPython kernel (cwd /workspace). "
        "Returns a summary of its outputs: text, errors, tables, charts.",
        RunPython,
        {"code": "print(1)"},
    ),
    Tool(
        "ask_user",
        "Ask the user a question when their request is ambiguous or needs a decision; the turn "
        "waits for the answer.",
        AskUser,
        {"question": "Which column holds the dates?"},
    ),
    Tool(
        "read_artifact",
        "Look closer at one output by its artifact id (shown as `artifact <id>`). view: 'text' "
        "(default), 'html' for raw HTML, 'data' for a chart's data.",
        ReadArtifact,
        {"artifact_id": "…", "view": "data"},
    ),
)
BY_NAME = {tool.name: tool for tool in TOOLS}
SCHEMAS = [tool.schema() for tool in TOOLS]


class BadCall(Exception):
    """A call the model must redo: the message says what was wrong and how to call it."""


def parse_call(call: ToolCall) -> tuple[Tool, ToolArguments]:
    """The tool and its validated arguments; BadCall (for the model to read) otherwise."""
    tool = BY_NAME.get(call.name)
    if tool is None:
        names = ", ".join(BY_NAME)
        raise BadCall(f"Error: there is no tool named {call.name!r}; the tools are {names}.")
    example = json.dumps(tool.example, ensure_ascii=False)
    try:
        raw = json.loads(call.arguments or "{}")
    except ValueError as e:
        raise BadCall(
            f"Error: the arguments of {tool.name} are not valid JSON ({e}). "
            f"Call it again with a JSON object, e.g. {example}."
        ) from None
    try:
        return tool, tool.arguments.model_validate(raw)
    except pydantic.ValidationError as e:
        problems = "; ".join(_problem(error) for error in e.errors())
        raise BadCall(
            f"Error: the arguments of {tool.name} are not valid: {problems}. "
            f"Call it again, e.g. {example}."
        ) from None


def _problem(error: Any) -> str:
    field = ".".join(str(p) for p in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"`{field}`: {message}" if field else message
