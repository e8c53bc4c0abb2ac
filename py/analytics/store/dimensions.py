"""Dimensions: which property of an event a rollup and a query group or filter by, in SQL.

One definition for the writer's rollups and for queries that fall back to raw events, so both
read a dimension the same way. Text only, no I/O.
"""

from __future__ import annotations

import re

#: Longest dimension value kept in rollups (btree keys must stay well under the page limit).
MAX_DIM_VALUE_CHARS = 256

_DIM_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")


def check_dimension(dim: str) -> str:
    if not _DIM_NAME.match(dim):
        raise ValueError(f"invalid dimension name {dim!r}")
    return dim


#: User-agent substrings to browser family, first match wins (order matters: Edge and Opera
#: also say "Chrome", Chrome also says "Safari").
UA_FAMILIES = (
    ("edg/", "Edge"),
    ("opr/", "Opera"),
    ("firefox/", "Firefox"),
    ("fxios/", "Firefox"),
    ("chrome/", "Chrome"),
    ("crios/", "Chrome"),
    ("safari/", "Safari"),
    ("bot", "Bot"),
    ("spider", "Bot"),
    ("crawl", "Bot"),
)


def _ua_family(props: str) -> str:
    ua = f"lower({props}->>'user_agent')"
    cases = " ".join(
        f"WHEN strpos({ua}, '{needle}') > 0 THEN '{family}'" for needle, family in UA_FAMILIES
    )
    return f"(CASE {cases} END)"


def dimension_expr(dim: str, props: str = "properties", *, enrich: bool = True) -> str:
    """SQL for a dimension's value of one event row.

    `referrer_host` is derived from the `referrer` URL; any other dimension is the flattened
    property of that name. With `enrich`, `browser` falls back to the family read from the
    `user_agent` property when the event names no browser (the `enrichment` flag's work).
    """
    check_dimension(dim)
    if dim == "browser" and enrich:
        value = f"coalesce({props}->>'browser', {props}->>'browser.name', {_ua_family(props)})"
        return f"left({value}, {MAX_DIM_VALUE_CHARS})"
    if dim == "referrer_host":
        # scheme://[user@]host[:port][/?#...] -> host, with string functions (a regex per
        # row costs several times more in the writer's hot statement).
        authority = (
            f"split_part(split_part(split_part(split_part({props}->>'referrer', '://', 2), "
            "'/', 1), '?', 1), '#', 1)"
        )
        value = f"nullif(lower(split_part(split_part({authority}, '@', -1), ':', 1)), '')"
    else:
        value = f"({props}->>'{dim}')"
    return f"left({value}, {MAX_DIM_VALUE_CHARS})"
