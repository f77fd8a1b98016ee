"""Tool calls for local models: JSON schemas for forced calls, and parsing of free-form outputs.

A forced tool call (``tool_choice`` = required / any / a tool's name) is decoded under the grammar of
``{"name": <one of the tools>, "arguments": <that tool's parameters schema>}`` and so always parses.
With ``tool_choice="auto"`` the model writes freely and its own tool-call format is parsed: Hermes /
Qwen style ``<tool_call>{...}</tool_call>`` blocks, or a whole answer that is one JSON object with
``name`` and ``arguments`` (or ``parameters``, as Llama 3 writes it).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ragplug.errors import InvalidInputError, SchemaError

__all__ = ["ToolCall", "ToolSpec", "forced_call_schema", "parse_tool_calls", "resolve_tool_choice"]

_NOT_AN_OBJECT = ("enum", "const", "items", "prefixItems")  # keywords that describe a non-object value
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call: name, description and a JSON schema for its arguments."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,128}", self.name):
            msg = f"tool name must be 1-128 letters, digits, '_', '.' or '-', got {self.name!r}"
            raise InvalidInputError(msg)
        if not isinstance(self.parameters, dict):
            msg = f"parameters of tool {self.name!r} must be a JSON schema dict"
            raise SchemaError(msg)
        kind = self.parameters.get("type", "object")
        if kind not in ("object", ["object"]) or any(k in self.parameters for k in _NOT_AN_OBJECT):
            msg = (
                f"parameters of tool {self.name!r} must be the JSON schema of an object (a call's arguments are "
                f"named), got {json.dumps(self.parameters, default=str)[:200]}; for other JSON use a response schema"
            )
            raise SchemaError(msg)

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI-style function description chat templates expect."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


def resolve_tool_choice(tool_choice: Any, tools: Sequence[ToolSpec]) -> tuple[str, list[ToolSpec]]:
    """Normalise a tool choice to ``("auto" | "none" | "required", allowed tools)``.

    Accepts ``None``/"auto", "none", "any"/"required"/True, a tool name, or
    ``{"type": "function", "function": {"name": ...}}``.
    """
    names = {t.name: t for t in tools}
    if tool_choice is None or tool_choice == "auto" or tool_choice is False:
        return ("auto" if tools else "none"), list(tools)
    if tool_choice == "none":
        return "none", []
    if not tools:
        msg = f"tool_choice={tool_choice!r} needs at least one bound tool"
        raise InvalidInputError(msg)
    if tool_choice in ("any", "required") or tool_choice is True:
        return "required", list(tools)
    name = tool_choice
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
    if isinstance(name, str) and name in names:
        return "required", [names[name]]
    msg = f"tool_choice {tool_choice!r} is not 'auto', 'none', 'any', 'required' or one of the tools {sorted(names)}"
    raise InvalidInputError(msg)


def forced_call_schema(tools: Sequence[ToolSpec]) -> dict[str, Any]:
    """JSON schema of one call to one of ``tools``."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": t.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def _as_call(obj: Any, known: set[str] | None) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict) or (known is not None and obj["name"] not in known):
        return None
    return ToolCall(obj["name"], args)


def parse_tool_calls(text: str, known: Sequence[str] | None = None) -> tuple[str, list[ToolCall]]:
    """``(content without the calls, calls)`` from a model's free-form answer."""
    names = set(known) if known is not None else None
    calls: list[ToolCall] = []
    for block in _BLOCK.findall(text):
        try:
            call = _as_call(json.loads(block), names)
        except ValueError:
            call = None
        if call is not None:
            calls.append(call)
    if calls:
        return _BLOCK.sub("", text).strip(), calls
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            call = _as_call(json.loads(stripped), names)
        except ValueError:
            call = None
        if call is not None:
            return "", [call]
    return text, []
