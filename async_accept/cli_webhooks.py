"""``async-accept webhooks dead`` and ``async-accept webhooks replay``: the
webhook dead letters of an outbox, listed and sent again."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .cli_common import Fail, print_table, runtime_of
from .errors import ConfigurationError

__all__ = ["add_webhook_commands"]


# -- commands ---------------------------------------------------------------------------------


def _dispatcher(args: argparse.Namespace) -> tuple[Any, bool]:
    """(WebhookDispatcher, owned: close it when done)."""
    if args.app:
        dispatcher = runtime_of(args.app).observer.dispatcher
        if dispatcher is None:
            raise ConfigurationError(f"{args.app} has no webhooks configured (webhook_secret)")
        return dispatcher, False
    url = args.outbox or os.environ.get("ASYNC_ACCEPT_WEBHOOK_OUTBOX")
    if not url:
        raise ConfigurationError(
            "which outbox? give --outbox URL (sqlite:///webhooks.db, redis://host:6379/0) "
            "or --app mysite.asgi:application"
        )
    from .outbox import Outbox, RedisOutbox, resolve_outbox
    from .webhooks import WebhookDispatcher, generate_secret

    outbox: Outbox
    if url.startswith(("redis://", "rediss://", "unix://")):
        outbox = RedisOutbox.from_url(url, namespace=args.namespace or None)
    elif url.startswith("sqlite:///"):
        outbox = resolve_outbox(url, namespace=args.namespace or None)
    else:
        if args.namespace:
            raise ConfigurationError("--namespace applies to SQLite and Redis outboxes only")
        outbox = resolve_outbox(url)
    # Listing and replaying sign nothing: the live dispatchers sign when they send.
    secret = os.environ.get("ASYNC_ACCEPT_WEBHOOK_SECRET") or generate_secret()
    return WebhookDispatcher(secret, outbox=outbox), True


def cmd_webhooks_dead(args: argparse.Namespace) -> int:
    dispatcher, owned = _dispatcher(args)
    try:
        dead = dispatcher.list_dead(args.limit)
        if args.json:
            for d in dead:
                print(
                    json.dumps(
                        {
                            "id": d.id,
                            "url": d.url,
                            "job_id": d.job_id,
                            "attempts": d.attempts,
                            "last_status": d.last_status,
                            "last_error": d.last_error,
                            "created_at": d.created_at,
                        }
                    )
                )
            return 0
        if not dead:
            print("no dead letters")
            return 0
        rows = [
            {
                "id": d.id,
                "url": d.url,
                "job": d.job_id or "",
                "attempts": d.attempts,
                "last": d.last_status if d.last_status is not None else (d.last_error or ""),
            }
            for d in dead
        ]
        print_table(rows, ("id", "url", "job", "attempts", "last"))
        return 0
    finally:
        if owned:
            dispatcher.close()


def cmd_webhooks_replay(args: argparse.Namespace) -> int:
    dispatcher, owned = _dispatcher(args)
    try:
        delivery = dispatcher.replay(args.id)
        if delivery is None:
            raise Fail(f"{args.id} is not a dead letter")
        print(f"delivery {delivery.id} to {delivery.url} queued again")
        return 0
    finally:
        if owned:
            dispatcher.close()


def _outbox_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the deliveries are")
    g.add_argument("--outbox", help="outbox URL (default: $ASYNC_ACCEPT_WEBHOOK_OUTBOX)")
    g.add_argument(
        "--namespace",
        help="SQLite or Redis outbox namespace (default: the URL's ?namespace=, else none "
        "for SQLite and async_accept for Redis)",
    )
    g.add_argument("--app", help="take the outbox from this application")


def add_webhook_commands(sub: Any) -> None:
    """Add ``webhooks dead`` and ``webhooks replay`` to the ``async-accept`` parser."""
    hooks = sub.add_parser("webhooks", help="webhook dead letters")
    hsub = hooks.add_subparsers(dest="action", required=True)
    p = hsub.add_parser("dead", help="list deliveries that kept failing")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    _outbox_args(p)
    p.set_defaults(func=cmd_webhooks_dead)
    p = hsub.add_parser("replay", help="send a dead letter again")
    p.add_argument("id")
    _outbox_args(p)
    p.set_defaults(func=cmd_webhooks_replay)
