"""The webhook outbox: deliveries waiting to be sent, kept where a restart finds them.

The shared pieces (:class:`Delivery`, :class:`DeliveryState`, the
:class:`Outbox` protocol) live in :mod:`async_accept.stores.outbox_base`; each
backend's outbox lives beside its store (``async_accept/stores/<backend>/outbox.py``).
This module keeps every name it always exported, so ``from async_accept.outbox
import ...`` keeps working. :class:`RedisOutbox` is imported on first use, so
importing this module never needs the ``redis`` package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .stores import resolve_outbox
from .stores.memory.outbox import MemoryOutbox
from .stores.outbox_base import (
    DEFAULT_LEASE,
    Delivery,
    DeliveryState,
    DisabledEndpoint,
    Outbox,
    new_message_id,
)
from .stores.sqlite.outbox import SQLiteOutbox

if TYPE_CHECKING:
    from .stores.redis.outbox import RedisOutbox

__all__ = [
    "DEFAULT_LEASE",
    "Delivery",
    "DeliveryState",
    "DisabledEndpoint",
    "MemoryOutbox",
    "Outbox",
    "RedisOutbox",
    "SQLiteOutbox",
    "new_message_id",
    "resolve_outbox",
]


def __getattr__(name: str) -> Any:
    if name == "RedisOutbox":
        from .stores.redis.outbox import RedisOutbox

        return RedisOutbox
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
