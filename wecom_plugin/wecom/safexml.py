"""A safe parser for WeCom's small, flat XML (reliability §3.2; contract §7.2, §8, §14.3).

WeCom never sends a DTD, an entity, attributes that matter or more than five levels (template
card ``SelectedItems/SelectedItem/OptionIds/OptionId`` and user ``ExtAttr/Item/Web/Title`` are the
deepest). So :func:`parse`:

1. refuses input over ``max_bytes`` (64 KiB) before looking at it;
2. refuses any ``<!DOCTYPE`` or ``<!ENTITY`` (any case) before parsing;
3. parses with defusedxml's parser (``forbid_dtd``, ``forbid_entities``, ``forbid_external``) forced
   to UTF-8, so a declared encoding cannot smuggle markup past step 2;
4. stops at ``max_depth`` (8) while parsing, from a counter, so deep nesting costs neither memory
   nor a ``RecursionError``.

Every refusal raises :class:`XmlRejected`; nothing else escapes for any input.

Expat below 2.6.0 lacks the "large tokens" fix (CVE-2023-52425: one huge token is re-scanned
quadratically). :func:`check_expat` reports the version; the mitigation on older Expat (the
interpreter this project pins has 2.5.0) is the size cap, which bounds any token to 64 KiB (reliability X5).
"""

from __future__ import annotations

import pyexpat
from typing import NamedTuple
from xml.etree.ElementTree import Element, TreeBuilder

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser, ParseError

MAX_BYTES = 64 * 1024
MAX_DEPTH = 8
_FORBIDDEN = (b"<!doctype", b"<!entity")

XmlValue = str | dict[str, "XmlValue"] | list["XmlValue"]


class XmlRejected(ValueError):
    """The input is not safe, well-formed WeCom XML. ``reason`` says why (for logs)."""

    def __init__(self, reason: str):
        super().__init__(f"XML rejected: {reason}")
        self.reason = reason


class ExpatStatus(NamedTuple):
    version: tuple[int, int, int]
    ok: bool  # True when Expat has the large-token fix (>= 2.6.0)


def check_expat() -> ExpatStatus:
    """The linked Expat version and whether it is ≥ 2.6.0; below that the 64 KiB cap is the mitigation."""
    version = tuple(pyexpat.version_info)
    return ExpatStatus(version, version >= (2, 6, 0))  # type: ignore[arg-type]


class _DepthLimitedBuilder:
    """A TreeBuilder target that refuses to open element ``max_depth + 1``."""

    def __init__(self, max_depth: int):
        self._builder = TreeBuilder()
        self._depth = 0
        self._max_depth = max_depth

    def start(self, tag: str, attrs: dict[str, str]) -> Element:
        self._depth += 1
        if self._depth > self._max_depth:
            raise XmlRejected("too_deep")
        return self._builder.start(tag, attrs)

    def end(self, tag: str) -> Element:
        self._depth -= 1
        return self._builder.end(tag)

    def data(self, text: str) -> None:
        self._builder.data(text)

    def close(self) -> Element:
        return self._builder.close()


def refuse_declarations(data: bytes) -> None:
    """Raise :class:`XmlRejected` if ``data`` contains ``<!DOCTYPE`` or ``<!ENTITY`` in any case.

    WeCom never sends either; refusing them before any parser runs closes billion laughs, quadratic
    blowup, XXE and external DTD fetches whatever the parser would have done.
    """
    lowered = bytes(data).lower()
    if any(marker in lowered for marker in _FORBIDDEN):
        raise XmlRejected("dtd_or_entity")


def parse(data: bytes, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> dict[str, XmlValue]:
    """The root element's children as a dict: leaf → its text (CDATA or plain, ``""`` when empty);
    element with children → a nested dict; a tag repeated among siblings → a list, in order.

    Attributes, comments and text beside child elements are ignored (WeCom uses none of them).

    Raises:
        XmlRejected: too large, DOCTYPE/ENTITY, not UTF-8, malformed, or nested deeper than ``max_depth``.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise XmlRejected("not_bytes")
    data = bytes(data)
    if len(data) > max_bytes:
        raise XmlRejected("too_large")
    refuse_declarations(data)
    parser = DefusedXMLParser(
        target=_DepthLimitedBuilder(max_depth),
        encoding="utf-8",
        forbid_dtd=True,
        forbid_entities=True,
        forbid_external=True,
    )
    try:
        parser.feed(data)
        root = parser.close()
    except XmlRejected:
        raise
    except DefusedXmlException as exc:
        raise XmlRejected(type(exc).__name__) from None
    except (ParseError, pyexpat.ExpatError, ValueError, UnicodeError):
        raise XmlRejected("malformed") from None
    value = _value(root)
    return value if isinstance(value, dict) else {}


def _value(element: Element) -> XmlValue:
    children = list(element)
    if not children:
        return element.text or ""
    out: dict[str, XmlValue] = {}
    for child in children:
        value = _value(child)  # depth is bounded by max_depth, so this recursion is too
        if child.tag not in out:
            out[child.tag] = value
        elif isinstance(out[child.tag], list):  # values are str/dict; a list only ever means "repeated"
            out[child.tag].append(value)  # type: ignore[union-attr]
        else:
            out[child.tag] = [out[child.tag], value]
    return out
