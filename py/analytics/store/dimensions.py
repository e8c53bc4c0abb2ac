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


def _ua_family(props: str, ua: str | None = None) -> str:
    ua = ua or f"lower({props}->>'user_agent')"
    cases = " ".join(
        f"WHEN strpos({ua}, '{needle}') > 0 THEN '{family}'" for needle, family in UA_FAMILIES
    )
    return f"(CASE {cases} END)"


#: A lateral join giving `u.ua`, the lowercased user agent of the events `e`, computed once
#: per row (`OFFSET 0` keeps the planner from inlining it back into each of the family's
#: tests): for `dimension_expr(..., ua="u.ua")`. Up to ten `lower()` calls a row otherwise.
UA_LATERAL = "CROSS JOIN LATERAL (SELECT lower(e.properties->>'user_agent') AS ua OFFSET 0) u"

#: Set in an event's `flags` by the group commit when the `enrichment` flag was off as it was
#: stored: its `browser` is then only what the event says (no family read from the user
#: agent), however the flag stands when the rollup job or a query reads it. (The Rust
#: normalizer's flags use the low bits.)
UNENRICHED = 0x4000


def dimension_expr(
    dim: str,
    props: str = "properties",
    *,
    enrich: bool = True,
    flags: str | None = None,
    ua: str | None = None,
) -> str:
    """SQL for a dimension's value of one event row.

    `referrer_host` is derived from the `referrer` URL; any other dimension is the flattened
    property of that name. With `enrich`, `browser` falls back to the family read from the
    `user_agent` property when the event names no browser (the `enrichment` flag's work);
    with `flags` (the SQL of the row's flags), only unless the row is marked `UNENRICHED`.
    `ua`: the SQL of the row's lowercased user agent when the caller computes it once (see
    `UA_LATERAL`); else each of the family's tests lowers it again.
    """
    check_dimension(dim)
    if dim == "browser" and enrich:
        named = f"coalesce({props}->>'browser', {props}->>'browser.name')"
        value = f"coalesce({named}, {_ua_family(props, ua)})"
        if flags is not None:
            value = f"(CASE WHEN {flags} & {UNENRICHED} = 0 THEN {value} ELSE {named} END)"
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


def fresh_ctes(
    dimensions: tuple[str, ...], source: str, *, users: bool, reread: bool = False
) -> list[str]:
    """CTEs: `src`, the events of `source` (SQL), and `fresh`, each with its customer_id,
    name, ts, value, (with `users`) user_id, and the value of each dimension of
    `sorted(dimensions)` read from its JSON once, as d0, d1, ... `reread`: another CTE reads
    `src` too (then kept, MATERIALIZED; else inlined, so the events' JSON is not copied
    into a tuplestore on the way)."""
    dims = sorted(dimensions)
    ua = "u.ua" if "browser" in dims else None
    extracted = ", ".join(
        f"{dimension_expr(d, 'e.properties', flags='e.flags', ua=ua)} AS d{i}"
        for i, d in enumerate(dims)
    )
    return [
        f"src AS {'MATERIALIZED' if reread else 'NOT MATERIALIZED'} ({source})",
        f"fresh AS MATERIALIZED (SELECT e.customer_id, e.name, e.ts, e.value, {extracted}"
        f"{', e.user_id' if users else ''} FROM src e{' ' + UA_LATERAL if ua else ''})",
    ]
