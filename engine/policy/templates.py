"""Explanation templates (`because:`) checked at load, so that rendering one is bounded.

A template is a Python format string whose replacement fields are plain fact names with an optional
standard format spec. Refused at load: attribute or index access (`{method.__class__}`, `{x[0]}`),
nested fields in a spec (`{gpu_usage:{width}}`), conversions other than !s / !r, a precision above
MAX_PRECISION or a width above MAX_WIDTH, a spec the fact's type cannot take (`{method:.2f}`), and
templates longer than MAX_TEMPLATE_CHARS or with more than MAX_TEMPLATE_FIELDS fields. What is left
renders to at most len(template) + fields x (MAX_WIDTH + the longest fact value) characters.
"""
from __future__ import annotations

import difflib
import re
import string

from .limits import MAX_PRECISION, MAX_TEMPLATE_CHARS, MAX_TEMPLATE_FIELDS, MAX_WIDTH

# The standard format-spec mini-language (Python docs, "Format Specification Mini-Language"):
# [[fill]align][sign][z][#][0][width][grouping][.precision][type]; fill may not be a brace.
_SPEC = re.compile(r"(?:[^{}]?[<>=^])?[+\- ]?z?#?0?(?P<width>\d+)?[_,]?(?:\.(?P<precision>\d+))?"
                   r"[bcdeEfFgGnosxX%]?")
# A value of each fact type to try a spec on: a spec that cannot format it fails at render time.
_SAMPLE: dict[type, object] = {bool: True, int: 1, float: 0.5, str: "x"}


def _suggest(name: str, known: dict[str, type]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def check_template(template: str, where: str, fact_types: dict[str, type]) -> list[str]:
    """Problems with one `because:` template (empty when it is safe to render).

    Args:
        template: the template text.
        where: file, rule and key, e.g. "rules/x.yaml: rules[0] (id).because".
        fact_types: the facts vocabulary, name -> type.
    Returns:
        One message per problem, each starting with `where`.
    """
    if len(template) > MAX_TEMPLATE_CHARS:
        return [f"{where}: template is {len(template)} characters (limit {MAX_TEMPLATE_CHARS})"]
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        return [f"{where}: bad template ({exc})"]
    if len(fields) > MAX_TEMPLATE_FIELDS:
        return [f"{where}: template has {len(fields)} fields (limit {MAX_TEMPLATE_FIELDS})"]
    problems = []
    for name, spec, conv in fields:
        problems += _check_field(name, spec or "", conv, where, fact_types)
    return problems


def _check_field(name: str, spec: str, conv: str | None, where: str, fact_types: dict[str, type]) -> list[str]:
    field = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
    if not name.isidentifier():
        kind = "attribute or index access" if any(c in name for c in ".[") else "a field that is not a fact name"
        return [f"{where}: {field}: {kind} is not allowed (only plain fact names)"]
    if name not in fact_types:
        return [f"{where}: unknown fact '{{{name}}}'{_suggest(name, fact_types)} (only plain fact names are allowed)"]
    if conv not in (None, "s", "r"):
        return [f"{where}: {field}: conversion !{conv} is not allowed (only !s, !r)"]
    if "{" in spec or "}" in spec:
        return [f"{where}: {field}: nested fields in a format spec are not allowed"]
    m = _SPEC.fullmatch(spec)
    if m is None:
        return [f"{where}: {field}: '{spec}' is not a standard format spec"]
    if m["width"] and int(m["width"]) > MAX_WIDTH:
        return [f"{where}: {field}: width {int(m['width'])} is above the limit of {MAX_WIDTH}"]
    if m["precision"] and int(m["precision"]) > MAX_PRECISION:
        return [f"{where}: {field}: precision {int(m['precision'])} is above the limit of {MAX_PRECISION}"]
    sample = _SAMPLE[fact_types[name]]
    try:
        format(repr(sample) if conv == "r" else str(sample) if conv == "s" else sample, spec)
    except ValueError as exc:
        return [f"{where}: {field}: cannot format {fact_types[name].__name__} fact '{name}' ({exc})"]
    return []
