"""A small evaluator of the part of Cloud Logging's query language that monitoring.tf's log-based metrics and the
dashboard's log panels use, to run them against log entries offline.

What it knows: comparisons joined by AND, each `FIELD OP VALUE` with OP one of = > >= < <=, VALUE a quoted
string, a number, a severity name, or alternatives `("a" OR "b")` (= only). A field is a dotted path into the
entry (`resource.type`, `resource.labels.service_name`, `severity`, `jsonPayload.event`). A comparison on a field
the entry lacks is false, as Logging's is; a string is equal only to a quoted string and a number only to a
number, so a filter must be written with the type the line has. Severities compare by rank. Anything else (OR
between comparisons, NOT, :, =~, !=, a bare word that is no severity) raises UnsupportedQuery rather than being
guessed: the evaluator never passes a filter it does not understand.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

SEVERITIES = ("DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY")

_QUOTED = r'"(?:[^"\\]|\\.)*"'
_COMPARISON = re.compile(
    rf"\s*(?P<field>[A-Za-z_][\w.]*)\s*(?P<operator>>=|<=|=|>|<)\s*"
    rf"(?P<value>{_QUOTED}|\((?:[^()\"]|{_QUOTED})*\)|[\w.-]+)\s*"
)
_AND = re.compile(r"AND\s+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class UnsupportedQuery(ValueError):
    """A query outside the subset this evaluator knows."""


@dataclasses.dataclass(frozen=True)
class Comparison:
    field: str
    operator: str
    values: tuple[str | float, ...]  # one value, or the alternatives of field=("a" OR "b")


def parse(query: str) -> tuple[Comparison, ...]:
    """The query's comparisons, in order; UnsupportedQuery for anything else."""
    comparisons = []
    position = 0
    while True:
        found = _COMPARISON.match(query, position)
        if found is None:
            raise UnsupportedQuery(f"cannot read a comparison at {query[position:]!r} in {query!r}")
        comparisons.append(_comparison(found["field"], found["operator"], found["value"], query))
        position = found.end()
        if position == len(query):
            return tuple(comparisons)
        joined = _AND.match(query, position)
        if joined is None:
            raise UnsupportedQuery(f"expected AND at {query[position:]!r} in {query!r}")
        position = joined.end()


def _comparison(field: str, operator: str, raw: str, query: str) -> Comparison:
    if raw.startswith("("):
        if operator != "=":
            raise UnsupportedQuery(f"alternatives only after =, in {query!r}")
        parts = re.split(r"\s+OR\s+", raw[1:-1].strip())
        return Comparison(field, operator, tuple(_value(part, field, query) for part in parts))
    return Comparison(field, operator, (_value(raw, field, query),))


def _value(raw: str, field: str, query: str) -> str | float:
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        return re.sub(r"\\(.)", r"\1", raw[1:-1])
    if _NUMBER.fullmatch(raw):
        return float(raw)
    if field == "severity" and raw in SEVERITIES:
        return raw
    raise UnsupportedQuery(f"unquoted value {raw!r} in {query!r}")


def lookup(entry: Mapping[str, Any], field: str) -> tuple[bool, Any]:
    """(present, value) of a dotted path in the entry."""
    value: Any = entry
    for part in field.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _holds(comparison: Comparison, entry: Mapping[str, Any]) -> bool:
    present, actual = lookup(entry, comparison.field)
    if not present or actual is None:
        return False
    return any(_compare(actual, comparison.operator, expected, comparison.field) for expected in comparison.values)


def _compare(actual: Any, operator: str, expected: str | float, field: str) -> bool:
    if field == "severity":
        if actual not in SEVERITIES or expected not in SEVERITIES:
            return False
        actual, expected = SEVERITIES.index(actual), SEVERITIES.index(expected)
    elif isinstance(expected, float):
        if isinstance(actual, bool) or not isinstance(actual, int | float):
            return False
    elif not isinstance(actual, str) or operator != "=":
        return False  # a string equals a quoted string only; no string ordering in this subset
    match operator:
        case "=":
            return actual == expected
        case ">=":
            return actual >= expected
        case ">":
            return actual > expected
        case "<=":
            return actual <= expected
        case "<":
            return actual < expected
    raise UnsupportedQuery(f"operator {operator!r}")


def matches(query: str, entry: Mapping[str, Any]) -> bool:
    """Whether Cloud Logging would select the entry with the query (within this subset)."""
    return all(_holds(comparison, entry) for comparison in parse(query))


# Special fields of a JSON line that Cloud Run's logging moves out of jsonPayload into the entry itself.
_ENTRY_FIELDS = {"severity", "time", "timestamp", "httpRequest"}


def cloud_run_entry(line: Mapping[str, Any], service: str) -> dict[str, Any]:
    """The log entry Cloud Run makes of one JSON line a function prints on stdout (sentiment_core.logs)."""
    payload = {
        key: value
        for key, value in line.items()
        if key not in _ENTRY_FIELDS and not key.startswith("logging.googleapis.com/")
    }
    return {
        "resource": {"type": "cloud_run_revision", "labels": {"service_name": service}},
        "severity": line.get("severity", "DEFAULT"),
        "jsonPayload": payload,
    }
