"""Results-store fixtures: a throwaway PostgreSQL server per session, a fresh database per test.

Import into a test module:  `from pgfixture import pg_server, pg_url, store_url  # noqa: F401`

`store_url` is parametrized over both backends ("sqlite", and "postgresql" marked
`postgres`). Without PostgreSQL server binaries the postgres cases skip naming why,
except in CI (CI=true), where they fail: CI installs the Debian package `postgresql`.
"""

from __future__ import annotations

import itertools
import os

import pytest

from hwtests import pgserver

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_counter = itertools.count()


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server():
    why = pgserver.unavailable_reason()
    if why:
        _unavailable(why)
    server = pgserver.PgServer()
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001 - any failure to start is "unavailable"
        _unavailable(f"throwaway PostgreSQL did not start: {exc}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """URL of a new empty database (holds the server's random password: never print it unredacted)."""
    return pg_server.create_database(f"t{os.getpid()}_{next(_counter)}")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "results.db")
    return request.getfixturevalue("pg_url")
