"""Target conditions over device twins — a small grammar in the style of Azure IoT Hub's:

    condition := or
    or        := and ("OR" and)*
    and       := not ("AND" not)*
    not       := "NOT" not | primary
    primary   := "(" or ")" | "*" | comparison
    comparison:= field ("=" | "!=" | "<>") value | field ["NOT"] "IN" "(" value ("," value)* ")"
    field     := deviceId | tags.NAME | capabilities.NAME   (NAME: letters, digits, _ - .)
    value     := 'single-quoted string' ('' escapes a quote) | number | true | false

Keywords are case-insensitive. `*` targets every device. A missing field compares unequal to everything (so
`tags.ring != 'ga'` is true for a device without a ring tag). Errors name the position: `expected a value at
position 14, found ')'`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<op>!=|<>|=|\(|\)|,|\*)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_.\-]*))"
)
KEYWORDS = {"AND", "OR", "NOT", "IN", "TRUE", "FALSE"}
MAX_LENGTH = 4096
MAX_DEPTH = 32  # nested parentheses and NOTs: deeper conditions are refused, never a RecursionError


class ConditionError(ValueError):
    """An unparseable target condition; `position` is the 0-based character offset of the problem."""

    def __init__(self, message: str, position: int, text: str):
        pointer = f"\n  {text}\n  {' ' * position}^"
        super().__init__(f"{message} at position {position}{pointer}")
        self.position = position


@dataclass(frozen=True)
class Tok:
    kind: str  # str, num, op, word, end
    value: str
    pos: int


def _tokens(text: str) -> list[Tok]:
    out: list[Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            start = pos + (len(text[pos:]) - len(text[pos:].lstrip()))
            raise ConditionError(f"unexpected character {text[start]!r}", start, text)
        kind = m.lastgroup or "op"
        start = m.start(kind)
        out.append(Tok(kind, m.group(kind), start))
        pos = m.end()
    out.append(Tok("end", "", len(text)))
    return out


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> Tok:
        return self.toks[self.i]

    def kw(self, word: str) -> bool:
        t = self.peek()
        if t.kind == "word" and t.value.upper() == word:
            self.i += 1
            return True
        return False

    def expect_op(self, op: str) -> None:
        t = self.peek()
        if t.kind != "op" or t.value != op:
            raise ConditionError(f"expected {op!r}, found {t.value or 'the end'!r}", t.pos, self.text)
        self.i += 1

    def parse(self) -> Any:
        node = self.or_()
        t = self.peek()
        if t.kind != "end":
            raise ConditionError(f"expected AND, OR or the end, found {t.value!r}", t.pos, self.text)
        return node

    def or_(self) -> Any:
        node = self.and_()
        while self.kw("OR"):
            node = ("or", node, self.and_())
        return node

    def and_(self) -> Any:
        node = self.not_()
        while self.kw("AND"):
            node = ("and", node, self.not_())
        return node

    def _deeper(self) -> None:
        self.depth = getattr(self, "depth", 0) + 1
        if self.depth > MAX_DEPTH:
            t = self.peek()
            raise ConditionError(
                f"the condition nests deeper than {MAX_DEPTH} levels (parentheses and NOT): simplify it",
                t.pos,
                self.text,
            )

    def not_(self) -> Any:
        if self.kw("NOT"):
            self._deeper()
            node = ("not", self.not_())
            self.depth -= 1
            return node
        return self.primary()

    def primary(self) -> Any:
        t = self.peek()
        if t.kind == "op" and t.value == "(":
            self.i += 1
            self._deeper()
            node = self.or_()
            self.expect_op(")")
            self.depth -= 1
            return node
        if t.kind == "op" and t.value == "*":
            self.i += 1
            return ("all",)
        if t.kind != "word" or t.value.upper() in KEYWORDS:
            raise ConditionError(
                f"expected a field (deviceId, tags.X, capabilities.X) or '(', found {t.value or 'the end'!r}",
                t.pos,
                self.text,
            )
        field = self.field()
        t = self.peek()
        negate = self.kw("NOT")
        if self.kw("IN"):
            self.expect_op("(")
            values = [self.value()]
            while self.peek().kind == "op" and self.peek().value == ",":
                self.i += 1
                values.append(self.value())
            self.expect_op(")")
            member = ("in", field, tuple(values))
            return ("not", member) if negate else member
        if negate:
            raise ConditionError("expected IN after NOT", self.peek().pos, self.text)
        t = self.peek()
        if t.kind == "op" and t.value in ("=", "!=", "<>"):
            self.i += 1
            return ("eq" if t.value == "=" else "ne", field, self.value())
        raise ConditionError(
            f"expected =, != or IN after {field[0]}, found {t.value or 'the end'!r}", t.pos, self.text
        )

    def field(self) -> tuple[str, ...]:
        t = self.peek()
        self.i += 1
        parts = t.value.split(".")
        if parts[0] == "deviceId" and len(parts) == 1:
            return ("deviceId",)
        if parts[0] in ("tags", "capabilities") and len(parts) >= 2 and all(parts[1:]):
            return tuple(parts)
        raise ConditionError(
            f"unknown field {t.value!r}: use deviceId, tags.NAME or capabilities.NAME", t.pos, self.text
        )

    def value(self) -> Any:
        t = self.peek()
        self.i += 1
        if t.kind == "str":
            return t.value[1:-1].replace("''", "'")
        if t.kind == "num":
            return float(t.value) if "." in t.value else int(t.value)
        if t.kind == "word" and t.value.upper() in ("TRUE", "FALSE"):
            return t.value.upper() == "TRUE"
        raise ConditionError(
            f"expected a value ('text', a number, true or false), found {t.value or 'the end'!r}",
            t.pos,
            self.text,
        )


@dataclass(frozen=True)
class Condition:
    text: str
    ast: Any

    def matches(self, twin: dict[str, Any]) -> bool:
        return _eval(self.ast, twin)


def parse(text: str) -> Condition:
    if not isinstance(text, str) or not text.strip():
        raise ConditionError("the condition is empty (use * for every device)", 0, str(text))
    if len(text) > MAX_LENGTH:
        raise ConditionError(
            f"the condition has {len(text)} characters; the limit is {MAX_LENGTH}",
            MAX_LENGTH,
            text[:60] + "…",
        )
    return Condition(text, _Parser(text).parse())


_MISSING = object()


def _lookup(twin: dict[str, Any], field: tuple[str, ...]) -> Any:
    if field == ("deviceId",):
        return twin.get("device_id", _MISSING)
    cur: Any = twin.get(field[0]) or {}
    key = ".".join(field[1:])
    if isinstance(cur, dict) and key in cur:
        return cur[key]
    return _MISSING


def _same(a: Any, b: Any) -> bool:
    if a is _MISSING:
        return False
    if isinstance(a, str) and not isinstance(b, str):
        return a == str(b).lower() if isinstance(b, bool) else a == str(b)
    return bool(a == b)


def _eval(node: Any, twin: dict[str, Any]) -> bool:
    op = node[0]
    if op == "all":
        return True
    if op == "or":
        return _eval(node[1], twin) or _eval(node[2], twin)
    if op == "and":
        return _eval(node[1], twin) and _eval(node[2], twin)
    if op == "not":
        return not _eval(node[1], twin)
    value = _lookup(twin, node[1])
    if op == "eq":
        return _same(value, node[2])
    if op == "ne":
        return not _same(value, node[2])
    if op == "in":
        return any(_same(value, v) for v in node[2])
    raise AssertionError(op)
