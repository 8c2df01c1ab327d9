"""``async-accept db upgrade`` and ``async-accept db sql``: the PostgreSQL store's
versioned tables, created or upgraded on demand, or printed for a DBA.

psycopg is imported only when a command runs, so the CLI works without it.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from .errors import ConfigurationError, StoreError

__all__ = ["add_db_commands"]


def _postgres_settings(args: argparse.Namespace) -> Any:
    from .stores.postgres.connection import parse_url

    url = args.store or os.environ.get("ASYNC_ACCEPT_STORE")
    if not url:
        raise ConfigurationError(
            "which database? give --store postgresql://user@host:5432/db?schema=async_accept "
            "or set ASYNC_ACCEPT_STORE"
        )
    return parse_url(url)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    import psycopg

    from .stores.postgres.connection import connect, upgrade

    settings = _postgres_settings(args)
    try:
        with connect(settings) as conn:
            before, after = upgrade(conn, settings.schema)
    except psycopg.Error as exc:
        raise StoreError(f"{settings.redacted()}: {exc}") from exc
    if before == after:
        print(f"schema {settings.schema!r} is up to date (version {after})")
    else:
        print(f"schema {settings.schema!r} upgraded from version {before} to {after}")
    return 0


def cmd_db_sql(args: argparse.Namespace) -> int:
    from .stores.postgres.connection import ddl, parse_url

    schema = args.schema
    if schema is None:
        url = args.store or os.environ.get("ASYNC_ACCEPT_STORE")
        schema = parse_url(url).schema if url else "async_accept"
    print(ddl(schema, start=args.since), end="")
    return 0


def add_db_commands(sub: Any) -> None:
    """The ``db`` command group, added to the CLI's subparsers."""
    db = sub.add_parser("db", help="the PostgreSQL store's tables")
    dsub = db.add_subparsers(dest="action", required=True)
    p = dsub.add_parser("upgrade", help="create or upgrade the tables (safe to repeat)")
    p.add_argument("--store", help="postgresql:// URL (default: $ASYNC_ACCEPT_STORE)")
    p.set_defaults(func=cmd_db_upgrade)
    p = dsub.add_parser("sql", help="print the DDL, for applying it yourself (psql -f)")
    p.add_argument("--store", help="take the schema name from this URL")
    p.add_argument("--schema", help="schema name (default: from --store, else async_accept)")
    p.add_argument(
        "--since", type=int, default=0, help="only the steps after this installed version"
    )
    p.set_defaults(func=cmd_db_sql)
