"""Django: the captured request, and who is calling (Django's and DRF's principal).

The owner of a job is the user the app authenticated, found where a status
read can find it again: at this middleware's place in ``MIDDLEWARE``.
Django's ``AuthenticationMiddleware`` puts ``request.user`` on the request
when it comes earlier. DRF authenticates inside the view
(``APIView.initial``), so a caller known by a DRF token has no user here: for
an accept (before the pre-check runs the view) and for a status read alike,
the middleware asks DRF's authenticators itself:
``DEFAULT_AUTHENTICATION_CLASSES`` and the ``authentication_classes`` of the
DRF views in the URLconf, the first that knows the caller wins. A second
token of the same user (a refresh, Basic instead of Token) reads the job;
another user's gets the 404. The user is not taken from inside the view: an
auth middleware placed after this one would name a user there that no status
read could recognize.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from .identity import django_principal, django_user_principal
from .job import CapturedRequest
from .wsgi import capture_environ

__all__ = ["acaller_principal", "caller_principal", "capture", "drf_principal"]


def capture(request: Any, path: str, body: bytes) -> CapturedRequest:
    """The engine's view of a Django request (WSGIRequest or ASGIRequest)."""
    full_path: str = request.path
    root = full_path[: len(full_path) - len(path)] if full_path.endswith(path) else ""
    scope = getattr(request, "scope", None)
    http_version = str(scope.get("http_version", "1.1")) if isinstance(scope, Mapping) else None
    captured = capture_environ(
        request.META,
        path,
        body,
        method=str(request.method).upper(),
        root_path=root.rstrip("/"),
        scheme=request.scheme,
        http_version=http_version,
    )
    captured.principal = django_principal(request)
    if body and captured.header(b"content-length") is None:
        # A chunked body (ASGI reads it whole): the job replays through Django's WSGI
        # handler, which reads exactly CONTENT_LENGTH bytes.
        captured.headers.append((b"content-length", str(len(body)).encode()))
    return captured


_classes_lock = threading.Lock()
#: (URLconf resolver, DRF defaults) -> the authenticator classes found for them
_classes: dict[tuple[int, tuple[Any, ...]], tuple[type, ...]] = {}


def _view_classes(patterns: Iterable[Any], api_view: type, out: list[type], depth: int) -> None:
    for entry in patterns:
        if depth < 20 and hasattr(entry, "url_patterns"):  # include()
            _view_classes(entry.url_patterns, api_view, out, depth + 1)
            continue
        callback = getattr(entry, "callback", None)
        cls = getattr(callback, "cls", None)
        if isinstance(cls, type) and issubclass(cls, api_view):
            given = (getattr(callback, "initkwargs", None) or {}).get("authentication_classes")
            out.extend(given if given is not None else getattr(cls, "authentication_classes", ()))


def drf_authenticators() -> tuple[type, ...]:
    """DRF's authenticator classes this app uses (empty without DRF)."""
    try:
        from django.urls import get_resolver
        from rest_framework.settings import api_settings
        from rest_framework.views import APIView
    except ImportError:
        return ()
    defaults = tuple(api_settings.DEFAULT_AUTHENTICATION_CLASSES)
    resolver = get_resolver()
    key = (id(resolver), defaults)
    with _classes_lock:
        found = _classes.get(key)
    if found is None:
        out: list[type] = list(defaults)
        _view_classes(resolver.url_patterns, APIView, out, 0)
        found = tuple(dict.fromkeys(c for c in out if isinstance(c, type)))
        with _classes_lock:
            _classes.clear()  # one URLconf and settings at a time
            _classes[key] = found
    return found


def drf_principal(request: Any) -> str | None:
    """Who DRF's authenticators say is calling (blocking: they may query the
    database); None when none knows the caller, or one refuses them."""
    classes = drf_authenticators()
    if not classes:
        return None
    from rest_framework.request import Request

    try:
        drf = Request(request, authenticators=[cls() for cls in classes])
        return django_user_principal(drf.user)
    except Exception:  # AuthenticationFailed, a broken backend: no principal, never a 500
        return None


def caller_principal(request: Any) -> str | None:
    """The caller's principal, blocking: ``request.user``, else DRF's authenticators."""
    return django_principal(request) or drf_principal(request)


async def acaller_principal(request: Any) -> str | None:
    """:func:`caller_principal` from async code: Django's ``request.auser()``, and
    DRF's authenticators in a thread."""
    principal = django_principal(request)
    if principal is None and hasattr(request, "auser"):
        try:
            principal = django_user_principal(await request.auser())
        except Exception:  # a broken auth backend: no principal, never a 500
            principal = None
    if principal is None and drf_authenticators():
        from asgiref.sync import sync_to_async

        principal = await sync_to_async(drf_principal)(request)
    return principal
