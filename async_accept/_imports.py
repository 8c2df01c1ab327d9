"""``"package.module:attr"`` options (the app a worker imports, an executor or
Celery app by path) are parsed and imported here, with one error message."""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ConfigurationError, MissingDependencyError

__all__ = ["import_from_string", "import_optional", "split_import_path"]


def split_import_path(path: Any, option: str) -> tuple[str, str]:
    """``(module, attr)`` of ``"package.module:attr"``; ConfigurationError naming
    the fix when ``path`` (the value of ``option``) is not such a path."""
    text = path.strip() if isinstance(path, str) else ""
    module, sep, attr = text.partition(":")
    if not sep or not module or not attr or " " in text:
        raise ConfigurationError(
            f"{option}={path!r} is not a dotted path: use 'package.module:attribute', "
            "e.g. 'mysite.asgi:application' or 'myapp.wsgi:app'"
        )
    return module, attr


def import_from_string(path: Any, option: str) -> Any:
    """The object ``"package.module:attr"`` names (dots allowed after the colon).

    A missing module or attribute raises ConfigurationError naming ``option``;
    an error raised by the imported module's own code propagates unchanged.
    """
    module_name, attr = split_import_path(path, option)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigurationError(
                f"{option}={path!r} can't be imported: no module named {exc.name!r} (run from "
                "your project's directory, or put it on PYTHONPATH)"
            ) from exc
        raise
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigurationError(
                f"{option}={path!r} can't be imported: {module_name} has no {attr!r}"
            ) from exc
    return obj


def import_optional(module: str, feature: str, extra: str) -> Any:
    """Import an optional dependency, or raise MissingDependencyError naming the
    ``feature`` that needs it and the ``extra`` that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(feature, extra, module) from exc
