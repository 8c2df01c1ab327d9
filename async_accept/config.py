"""The options' old home: every option is declared in :mod:`async_accept.options`."""

from __future__ import annotations

from .options import (
    ENV_SECRET,
    DiscoverFunc,
    EventListener,
    HealthMode,
    IdentityFunc,
    Options,
    OptionsKwargs,
    build_options,
    check_route_webhook,
)

__all__ = [
    "ENV_SECRET",
    "DiscoverFunc",
    "EventListener",
    "HealthMode",
    "IdentityFunc",
    "Options",
    "OptionsKwargs",
    "build_options",
    "check_route_webhook",
]
