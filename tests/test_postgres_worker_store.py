"""A store worker started with a --store that is not its application's store is
refused at start with a ConfigurationError naming the fix: the PostgreSQL
store's instance marker tells places apart however the server is named."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from async_accept.errors import ConfigurationError
from async_accept.executors.store import check_same_store
from async_accept.stores import resolve_store
from tests.servers import base_env
from tests.services import drop_postgres_schema, postgres_schema_url, require_postgres
from tests.test_distributed import APPS, TIMING

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def two_schemas() -> Iterator[tuple[str, str]]:
    """Two store URLs on fresh schemas of one database, dropped after the test."""
    base = require_postgres()
    (a, sa), (b, sb) = postgres_schema_url(base), postgres_schema_url(base)
    try:
        yield a, b
    finally:
        drop_postgres_schema(sa)
        drop_postgres_schema(sb)


def _closing(*urls: str) -> list[Any]:
    return [resolve_store(u) for u in urls]


def test_postgres_stores_are_told_apart_by_schema_not_by_host_name(
    two_schemas: tuple[str, str],
) -> None:
    """Another schema is refused; the same schema reached as localhost passes."""
    a, b = two_schemas
    same = a.replace("127.0.0.1", "localhost")
    app, other, alias = _closing(a, b, same)
    try:
        with pytest.raises(ConfigurationError, match="Drop --store"):
            check_same_store(app, other, "mysite:app", b)
        check_same_store(app, alias, "mysite:app", same)
        assert app.instance_id() == alias.instance_id() != other.instance_id()
    finally:
        for s in (app, other, alias):
            s.close()


def test_another_backend_or_another_sqlite_file_is_refused(
    two_schemas: tuple[str, str], tmp_path: Path
) -> None:
    """A SQLite --store for a PostgreSQL app, or another SQLite file, is refused; the
    same file under another spelling of its path passes."""
    a, _ = two_schemas
    one, two = f"sqlite:///{tmp_path / 'one.db'}", f"sqlite:///{tmp_path / 'two.db'}"
    spelled = f"sqlite:///{tmp_path / 'x' / '..' / 'one.db'}"
    (tmp_path / "x").mkdir()
    pg, s1, s2, s1b = _closing(a, one, two, spelled)
    try:
        with pytest.raises(ConfigurationError, match="not the store"):
            check_same_store(pg, s1, "mysite:app", one)
        with pytest.raises(ConfigurationError, match="not the store"):
            check_same_store(s1, s2, "mysite:app", two)
        check_same_store(s1, s1b, "mysite:app", spelled)
    finally:
        for s in (pg, s1, s2, s1b):
            s.close()


def test_worker_process_with_another_store_exits_naming_the_fix(
    two_schemas: tuple[str, str], tmp_path: Path
) -> None:
    """`async-accept worker --store B` for an app on store A exits non-zero at start
    with the ConfigurationError, before claiming anything."""
    a, b = two_schemas
    env = base_env(ASYNC_ACCEPT_STORE=a, ASYNC_ACCEPT_EXECUTOR="store", **TIMING)
    argv = [sys.executable, "-m", "async_accept.cli", "worker", "--app", APPS["asgi"]]
    proc = subprocess.run(
        [*argv, "--store", b], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "is not the store" in proc.stderr and "Drop --store" in proc.stderr
