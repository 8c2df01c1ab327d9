"""What the framework integrations share: reading a framework's path templates,
and the options a Flask-style extension wraps its app with."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from .options import ENV_SECRET, OPTION_NAMES
from .routes import RoutePattern

#: app.config keys are this prefix and the option's name in capitals.
CONFIG_PREFIX = "ASYNC_ACCEPT_"


def path_template(template: str, field: re.Pattern[str], known: frozenset[str]) -> str:
    """A framework's ``{name:converter...}`` path as a route pattern: converters
    in ``known`` are kept, any other matches one segment of any text.

    ``field`` matches one placeholder, the name in group 1, the converter in group 2.
    """

    def sub(m: re.Match[str]) -> str:
        name, conv = m.group(1), m.group(2)
        return f"{{{name}:{conv}}}" if conv in known else f"{{{name}}}"

    return field.sub(sub, template)


def options_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Middleware options from the ``ASYNC_ACCEPT_<OPTION>`` keys of an app's config.

    With no secret among them (and no ``ASYNC_ACCEPT_SECRET_KEY`` in the
    environment) the app's ``SECRET_KEY`` is used.
    """
    opts: dict[str, Any] = {}
    for name in OPTION_NAMES:
        key = CONFIG_PREFIX + name.upper()
        if key in config:
            opts[name] = config[key]
    if opts.get("secret_key") is None and not os.environ.get(ENV_SECRET):
        opts.pop("secret_key", None)
        if config.get("SECRET_KEY"):
            opts["secret_key"] = config["SECRET_KEY"]
    return opts


def extension_options(
    app: Any, given: Mapping[str, Any], discover_app: Callable[[Any], list[RoutePattern]]
) -> dict[str, Any]:
    """A Flask-style extension's middleware options: ``app.config``'s, then the
    ``given`` keywords; ``discover`` finds the app's routes (``discover_app``)
    and then those of the user's own ``discover``, if any."""
    opts = {**options_from_config(app.config), **given}
    extra = opts.pop("discover", None)

    def discover() -> list[RoutePattern]:
        # Runs on the first request: every view and blueprint is registered by then.
        return [*discover_app(app), *(extra() if extra is not None else ())]

    opts["discover"] = discover
    return opts
