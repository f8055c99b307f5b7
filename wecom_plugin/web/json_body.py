"""The JSON body of a machine API request, checked before any use case sees it.

``request.get_json`` alone lets two inputs through that end as a 500 rather than a 400:

* nesting deep enough to exhaust Python's recursion while parsing (``[[[[...]]]]``);
* a NUL character (``\\u0000``) in a string: valid JSON, but PostgreSQL's ``text`` cannot hold it, so the
  first write fails halfway through a use case.

:func:`json_object` refuses both (and anything that is not a JSON object) with one message each way.
"""

from __future__ import annotations

import json
from typing import Any

from flask import request

#: Deeper than any body our APIs take (a group request's rule is about 4 levels).
MAX_DEPTH = 32


class BodyError(ValueError):
    """A body the API refuses: ``zh`` and ``en`` say why."""

    def __init__(self, zh: str, en: str) -> None:
        super().__init__(en)
        self.zh, self.en = zh, en


def json_object() -> dict[str, Any]:
    """The request body as a JSON object.

    Raises:
        BodyError: not JSON, not an object, nested deeper than :data:`MAX_DEPTH`, or holding a NUL character.
    """
    raw = request.get_data(cache=True)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise BodyError("请求体不是有效的 JSON", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BodyError("请求体应为 JSON 对象", "the body must be a JSON object")
    _check(body)
    return body


def _check(value: Any) -> None:
    """Walk ``value`` without recursion (the depth is what is being checked)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BodyError(f"请求体嵌套超过 {MAX_DEPTH} 层", f"the body is nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            if "\x00" in item:
                raise BodyError("请求体含有空字符（\\u0000）", "the body holds a NUL character (\\u0000)")
            if any(0xD800 <= ord(c) <= 0xDFFF for c in item):
                raise BodyError("请求体含有不成对的代理字符", "the body holds a lone surrogate character")
        elif isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, depth + 1))
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
