"""Numbers and JSON that shoppers, merchants or anyone on the internet send: checked in one place, so that bad
input is a 400 with a sentence, never an overflow, a recursion error or a 500.

`int("²")` and `int("١٢")` work on Unicode digits and `str.isdigit()` says yes to "²", so ids are ASCII
digits only, and every number has a range: a database id fits 64 bits."""

from __future__ import annotations

import json
import re

MAX_ID = 2**63 - 1  # BIGINT
MAX_JSON_DEPTH = 32


class BadInput(ValueError):
    """Input we refuse; the message says what was wrong (the web layer answers 400 with it)."""


def whole_number(value: object, what: str, low: int = 0, high: int = MAX_ID) -> int:
    """An int from a JSON number or an ASCII-digit string, within [low, high]."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        shown = value if isinstance(value, int) and len(str(value)) <= 24 else repr(value)[:24]
        raise BadInput(f"{what} must be a whole number from {low} to {high}, got {shown}.")
    return value


def shopify_id(value: object, what: str) -> int:
    """A Shopify numeric id (as a number or a string of ASCII digits) that fits the database's 64 bits."""
    try:
        return whole_number(value, what, 1, MAX_ID)
    except BadInput:
        raise BadInput(f"{what} must be a numeric Shopify id, got {repr(value)[:40]}.") from None


def id_list(text: str, what: str, at_most: int) -> list[int]:
    """Comma-separated Shopify ids, e.g. a cart."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if len(parts) > at_most:
        raise BadInput(f"{what} has {len(parts)} items; at most {at_most}.")
    return [shopify_id(part, f"{what} item") for part in parts]


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def plain_text(value: object, what: str, at_most: int) -> str:
    """Words a person typed: a non-empty string of at most `at_most` characters, stripped, with no control
    characters or unpaired surrogates (which no database column or mail client takes)."""
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"{what} must be a non-empty text.")
    if len(value) > at_most:
        raise BadInput(f"{what} may be at most {at_most} characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput(f"{what} is not valid Unicode text.") from None
    if _CONTROL.search(value):
        raise BadInput(f"{what} contains control characters.")
    return value.strip()


_STRUCTURE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')  # a whole string literal, or a bracket


def json_depth(body: bytes | str) -> int:
    """How deeply arrays and objects nest, read without parsing (string literals skipped)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    depth = deepest = 0
    for token in _STRUCTURE.finditer(text):
        char = token.group()
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def load_json(body: bytes | str, what: str = "body", max_depth: int = MAX_JSON_DEPTH) -> object:
    """Parsed JSON, refusing anything nested deeper than `max_depth` (the parser would recurse out)."""
    if json_depth(body) > max_depth:
        raise BadInput(f"{what} nests deeper than {max_depth} levels.")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadInput(f"{what} is not valid JSON: {exc}") from None


def line_of(data: bytes | str, offset: int) -> int:
    """The 1-based line number of `offset` in `data`."""
    return data.count(b"\n" if isinstance(data, bytes) else "\n", 0, offset) + 1


def utf8_text(data: bytes, what: str, at_most: int) -> str:
    """The text of an uploaded file: 1 byte to `at_most` bytes of UTF-8 (a leading byte-order mark dropped), with
    no NUL character. BadInput names the line where it goes wrong, so a merchant can find it."""
    if not data:
        raise BadInput(f"line 1: {what} is empty.")
    if len(data) > at_most:
        raise BadInput(f"line {line_of(data, at_most)}: {what} is larger than {at_most} bytes; split it up.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"line {line_of(data, exc.start)}: {what} is not UTF-8 text (byte {exc.start} "
                       f"cannot be decoded); save it as UTF-8.") from None
    text = text.removeprefix("\ufeff")
    if "\x00" in text:
        raise BadInput(f"line {line_of(text, text.index(chr(0)))}: {what} holds a NUL character.")
    if not text.strip():
        raise BadInput(f"line 1: {what} holds nothing but blank space.")
    return text


def text_lines(text: str, what: str, max_lines: int, max_line_chars: int) -> list[str]:
    """`text` cut into lines at "\\n" only (a JSON string may hold U+2028, which `str.splitlines` would cut at),
    "\\r\\n" endings taken off; BadInput names the first line past `max_lines` or longer than `max_line_chars`."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) > max_lines:
        raise BadInput(f"line {max_lines + 1}: {what} has more than {max_lines} lines; split it up.")
    lines = [line.removesuffix("\r") for line in lines]
    for number, line in enumerate(lines, 1):
        if len(line) > max_line_chars:
            raise BadInput(f"line {number}: longer than {max_line_chars} characters.")
    return lines
