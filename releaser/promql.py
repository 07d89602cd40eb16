"""Just enough PromQL to know whether a query can return more than one series.

An `[[analysis.prometheus]]` query must come down to one number. `at_most_one`
says True only when the query's shape guarantees at most one series (or a
scalar): a number, `scalar()`, `vector()`, `time()`, `absent()`, an aggregation
without grouping (`sum(...)`, `sum by () (...)`, `topk(1, ...)`),
`histogram_quantile` over buckets aggregated `by (le)`, functions of those, and
arithmetic, comparisons, `or`/`and`/`unless` between those. Anything else (a
bare selector, `rate(x[1m])`, `sum by (route) (...)`, `without`, `count_values`,
something this parser does not follow) may return several series: the config
then needs a `reduce` rule. False is never wrong, only cautious; Prometheus
itself judges the syntax (publish asks it before anything changes).

Templates: `{release_id}`, `{host}` and `{channel}` in a query are replaced by
plain words only (letters, digits, `_.:-`), so a value can never change the
query's structure; PromQL's own braces (`{status=~"5.."}`) are left alone.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<num>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[a-zA-Z0-9]*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=(){}\[\],:@])
""", re.VERBOSE)

AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
# functions whose answer is one series (or a scalar) whatever their argument
SINGLE_FUNCTIONS = {"scalar", "vector", "time", "pi", "absent", "absent_over_time"}
# word operators and their binding, lowest first (PromQL's precedence)
PRECEDENCE = {"or": 1, "and": 2, "unless": 2, "==": 3, "!=": 3, "<=": 3, "<": 3, ">=": 3,
              ">": 3, "+": 4, "-": 4, "*": 5, "/": 5, "%": 5, "atan2": 5, "^": 6}

ONE, BY_LE, MANY = "one", "by_le", "many"

TEMPLATE_VARS = ("release_id", "host", "channel")
_TEMPLATE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.:-]*")
# what at_most_one sees in place of the template values
SAMPLE_VALUES = {"release_id": "1", "host": "h", "channel": "c"}


def template_names(query: str) -> set[str]:
    """Every {word} in the query (PromQL itself never has a bare {word})."""
    return set(_TEMPLATE.findall(query))


def render(query: str, values: dict[str, str]) -> str:
    """Replace {release_id}, {host}, {channel}; ValueError for a value not a plain word."""
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in TEMPLATE_VARS:
            return m.group(0)
        value = values.get(name, "")
        if not PLAIN_VALUE.fullmatch(value):
            raise ValueError(f"template value {{{name}}} = {value!r} is not a plain word")
        return value
    return _TEMPLATE.sub(sub, query)


class _Unsure(Exception):
    """The parser cannot follow the query: treat it as possibly several series."""


def tokens(query: str) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(query):
        m = _TOKEN.match(query, pos)
        if m is None:
            raise _Unsure(f"unexpected {query[pos]!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append(m.group())
    return out


def at_most_one(query: str) -> bool:
    """True when the query provably returns a scalar or at most one series."""
    try:
        parser = _Parser(tokens(query))
        card = parser.expr(0)
        if parser.peek() is not None:
            raise _Unsure(f"unexpected {parser.peek()!r}")
    except (_Unsure, IndexError):
        return False
    return card == ONE


class _Parser:
    def __init__(self, toks: list[str]) -> None:
        self.toks = toks
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.toks[self.i]
        if expected is not None and tok.lower() != expected:
            raise _Unsure(f"expected {expected!r}, got {tok!r}")
        self.i += 1
        return tok

    def skip_group(self, open_: str, close: str) -> None:
        """Skip a balanced (...) or [...] or {...} starting at the current token."""
        self.take(open_)
        depth = 1
        while depth:
            tok = self.take()
            depth += (tok == open_) - (tok == close)

    def labels(self) -> list[str]:
        """`(a, b)` after by/without/on/ignoring/group_left."""
        self.take("(")
        names: list[str] = []
        while self.peek() != ")":
            tok = self.take()
            if tok != ",":
                names.append(tok)
        self.take(")")
        return names

    # -- expressions -------------------------------------------------------

    def expr(self, min_prec: int) -> str:
        left = self.unary()
        while True:
            op = (self.peek() or "").lower()
            prec = PRECEDENCE.get(op)
            if prec is None or prec < min_prec:
                return left
            self.take()
            if (self.peek() or "").lower() == "bool":
                self.take()
            if (self.peek() or "").lower() in ("on", "ignoring"):
                self.take()
                self.labels()
            if (self.peek() or "").lower() in ("group_left", "group_right"):
                self.take()
                if self.peek() == "(":
                    self.labels()
            right = self.expr(prec if op == "^" else prec + 1)
            left = _combine(op, left, right)

    def unary(self) -> str:
        if self.peek() in ("-", "+"):
            self.take()
            return self.unary()
        return self.postfix(self.primary())

    def postfix(self, card: str) -> str:
        while True:
            tok = (self.peek() or "").lower()
            if tok == "[":
                self.skip_group("[", "]")  # a range or a subquery: same series
            elif tok == "offset":
                self.take()
                if self.peek() in ("-", "+"):
                    self.take()
                self.take()
            elif tok == "@":
                self.take()
                if self.peek() in ("-", "+"):
                    self.take()
                word = self.take()
                if self.peek() == "(":  # start() / end()
                    self.skip_group("(", ")")
                elif not re.match(r"[\d.]", word):
                    raise _Unsure(f"@ {word}")
            else:
                return card

    def primary(self) -> str:
        tok = self.take()
        low = tok.lower()
        if tok[0] in "\"'`" or re.match(r"[\d.]", tok) or low in ("inf", "nan"):
            return ONE
        if tok == "(":
            card = self.expr(0)
            self.take(")")
            return card
        if tok == "{":
            self.i -= 1
            self.skip_group("{", "}")
            return MANY
        if low in AGGREGATIONS and (self.peek() or "").lower() in ("(", "by", "without"):
            return self.aggregation(low)
        if self.peek() == "(":
            return self.function(low)
        # a metric name, maybe with label matchers: any number of series
        if self.peek() == "{":
            self.skip_group("{", "}")
        return MANY

    def aggregation(self, name: str) -> str:
        grouping: tuple[str, list[str]] | None = None
        if (self.peek() or "").lower() in ("by", "without"):
            grouping = (self.take().lower(), self.labels())
        self.take("(")
        args = [self.expr(0)]
        first_is_one = self.toks[self.i - 1] == "1"
        while self.peek() == ",":
            self.take()
            args.append(self.expr(0))
        self.take(")")
        if (self.peek() or "").lower() in ("by", "without"):
            grouping = (self.take().lower(), self.labels())
        if name in ("count_values", "limit_ratio"):
            return MANY
        if name in ("topk", "bottomk", "limitk") and not (first_is_one and len(args) == 2):
            return MANY
        if grouping is None or grouping == ("by", []):
            return ONE
        if grouping[0] == "by" and set(grouping[1]) == {"le"}:
            return BY_LE
        return MANY

    def function(self, name: str) -> str:
        self.take("(")
        args: list[str] = []
        while self.peek() != ")":
            args.append(self.expr(0))
            if self.peek() == ",":
                self.take()
        self.take(")")
        if name in SINGLE_FUNCTIONS:
            return ONE
        if name == "histogram_quantile" and len(args) == 2:
            return ONE if args[1] in (ONE, BY_LE) else MANY
        # every other function keeps (or lowers) the number of series of its arguments
        return MANY if any(a != ONE for a in args) else ONE


def _combine(op: str, left: str, right: str) -> str:
    if op in ("and", "unless"):
        return left if left != BY_LE else MANY  # a subset of the left side
    return ONE if left == ONE and right == ONE else MANY
