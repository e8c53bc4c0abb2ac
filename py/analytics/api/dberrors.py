"""The database being unreachable, as the API answers it: 503 `database_unavailable`.

A request that needs PostgreSQL while it cannot be reached (connection refused or lost, no
connection from the pool in time, the server shutting down or refusing connections to the
database) is the outage's fault, not the request's and not a bug: it is answered 503 with
`Retry-After`, and logged once, as a warning without a traceback (`/readyz` reports the
same outage to the load balancer). Any other database error is a bug and stays a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from analytics.api.errors import ApiError

log = logging.getLogger(__name__)

#: Exceptions that mean "the database cannot be reached now", whatever the statement was.
UNAVAILABLE: tuple[type[Exception], ...] = (
    OSError,  # refused, reset, unreachable, name resolution
    TimeoutError,  # connecting, waiting for a pool connection (`acquire_timeout_s`), a statement
    asyncpg.InterfaceError,  # the connection or the pool is closed (or closing)
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08; also a connection lost mid-query
    asyncpg.CannotConnectNowError,  # 57P03: starting up, shutting down, in recovery
    asyncpg.AdminShutdownError,  # 57P01: the server ended the session (shutdown, terminate)
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.TooManyConnectionsError,  # 53300
    # A pooled connection whose session the server ended while it sat idle: the next
    # statement finds its protocol still consuming that error ("cannot switch to state").
    asyncpg.InternalClientError,
)

#: Seconds a client is asked to wait: outages worth a 503 are usually restarts and failovers.
RETRY_AFTER_S = 1


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be reached. Besides UNAVAILABLE, any error
    the server reports as FATAL: it ends the session, so it comes from connecting or from
    the server going away (e.g. "database is not currently accepting connections")."""
    if isinstance(exc, UNAVAILABLE):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        severity = exc.severity_en or exc.severity or ""
        return severity.upper() in ("FATAL", "PANIC")
    return False


@contextmanager
def database_errors(what: str) -> Iterator[None]:
    """Turns the database being unreachable during the block (`what`, e.g. "key lookup") into
    ApiError 503 `database_unavailable`; every other exception passes unchanged."""
    try:
        yield
    except Exception as e:
        if not unavailable(e):
            raise
        log.warning("database unavailable during %s: %s: %s", what, type(e).__name__, e)
        raise ApiError(
            503,
            "database_unavailable",
            "the database is unavailable; retry later",
            {"Retry-After": str(RETRY_AFTER_S)},
        ) from None
