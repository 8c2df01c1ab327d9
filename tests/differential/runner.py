"""Running one request against every variant of one framework's app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tests.differential import apps
from tests.differential.apps import Built, Mode
from tests.differential.harness import Flow, Req, asgi_flow, asgi_lifespan, wsgi_flow

Builder = Callable[[Mode], Built]


@dataclass
class Outcome:
    """What the handler saw and what the client got, for one variant."""

    seen: list[dict[str, Any]]
    flow: Flow


@contextlib.contextmanager
def django_settings(mode: Mode, asgi: bool, view: Any = None) -> Iterator[Any]:
    """Django's WSGI or ASGI handler over the differential URLconf, with the
    middleware (marked) or without it (``mode`` None)."""
    from django.core.asgi import get_asgi_application
    from django.core.wsgi import get_wsgi_application
    from django.test import override_settings

    middleware = [m for m in apps.DJANGO_MIDDLEWARE if mode is not None or "async_accept" not in m]
    urlconf = apps.django_urlconf(mode) if view is None else apps.django_urlconf(mode, view)
    with override_settings(
        ROOT_URLCONF=urlconf,
        MIDDLEWARE=middleware,
        ASYNC_ACCEPT={"store": "memory://", "poll_interval": 1},
    ):
        yield get_asgi_application() if asgi else get_wsgi_application()


def run_asgi(build: Builder, req: Req, mode: Mode) -> Outcome:
    """``req`` through the ASGI app built for ``mode`` (lifespan run around it)."""

    async def scenario() -> Outcome:
        built = build(mode)
        apps.SEEN.clear()
        async with asgi_lifespan(built.app) as state:
            flow = await asgi_flow(built.app, req, state or None)
        built.close()
        return Outcome(list(apps.SEEN), flow)

    return asyncio.run(scenario())


def run_wsgi(build: Builder, req: Req, mode: Mode) -> Outcome:
    """``req`` through the WSGI app built for ``mode``."""
    built = build(mode)
    apps.SEEN.clear()
    try:
        flow = wsgi_flow(built.app, req)
    finally:
        built.close()
    return Outcome(list(apps.SEEN), flow)


def run_django(req: Req, mode: Mode, *, asgi: bool) -> Outcome:
    """``req`` through Django's WSGI or ASGI handler."""
    with django_settings(mode, asgi) as handler:
        apps.SEEN.clear()
        if asgi:

            async def scenario() -> Flow:
                return await asgi_flow(handler, req)

            flow = asyncio.run(scenario())
        else:
            flow = wsgi_flow(handler, req)
        return Outcome(list(apps.SEEN), flow)


FRAMEWORKS: dict[str, Callable[[Req, Mode], Outcome]] = {
    "starlette": lambda req, mode: run_asgi(apps.build_starlette, req, mode),
    "fastapi": lambda req, mode: run_asgi(apps.build_fastapi, req, mode),
    "litestar": lambda req, mode: run_asgi(apps.build_litestar, req, mode),
    "quart": lambda req, mode: run_asgi(apps.build_quart, req, mode),
    "falcon-asgi": lambda req, mode: run_asgi(apps.build_falcon_asgi, req, mode),
    "falcon-wsgi": lambda req, mode: run_wsgi(apps.build_falcon_wsgi, req, mode),
    "flask": lambda req, mode: run_wsgi(apps.build_flask, req, mode),
    "django-wsgi": lambda req, mode: run_django(req, mode, asgi=False),
    "django-asgi": lambda req, mode: run_django(req, mode, asgi=True),
}
WSGI = frozenset({"falcon-wsgi", "flask", "django-wsgi"})


def differences(framework: str, req: Req) -> list[str]:
    """What differs between the unmarked app and the marked ones (hybrid and 202),
    as readable lines; empty when the handler saw the same request and the client
    got the same final response.

    Where the unmarked app answers before its handler (a 404 of its router, a
    405), the marked app must answer the same at once, without a job: the app
    decides first."""
    run = FRAMEWORKS[framework]
    base = run(req, None)
    problems: list[str] = []
    assert len(base.seen) <= 1, f"the unmarked handler ran {len(base.seen)} times"
    reached = bool(base.seen)
    assert base.flow.final is not None
    for mode in ("hybrid", "async"):
        got = run(req, mode)
        first = got.flow.first.status
        if not reached and first == 202:
            problems.append(f"{mode}: a 202 although the app answers {base.flow.final.status}")
        elif reached and mode == "async" and first != 202:
            problems.append(f"{mode}: the first answer was {first}, not 202")
        elif reached and mode == "hybrid" and first == 202:
            problems.append(f"{mode}: a 202 although the handler answers at once")
        if len(got.seen) != len(base.seen):
            problems.append(f"{mode}: the handler ran {len(got.seen)} times")
        elif reached:
            for key, want in base.seen[0].items():
                have = got.seen[0].get(key)
                if have != want:
                    problems.append(f"{mode}: the handler saw {key}={have!r}, not {want!r}")
        if got.flow.final is None:
            problems.append(f"{mode}: no final response ({got.flow.statuses[-1:]})")
            continue
        want_status, want_headers, want_body = base.flow.final.comparable()
        have_status, have_headers, have_body = got.flow.final.comparable()
        if mode == "hybrid":  # the one header a hybrid route adds: its answer depends on Prefer
            have_headers = [h for h in have_headers if h != (b"vary", b"Prefer")]
        else:  # the result is one caller's: it says no shared cache may keep it
            have_headers = [h for h in have_headers if h != (b"cache-control", b"no-store")]
        if have_status != want_status:
            problems.append(f"{mode}: final status {have_status}, not {want_status}")
        if have_headers != want_headers:
            problems.append(f"{mode}: final headers {have_headers!r}, not {want_headers!r}")
        if have_body != want_body:
            problems.append(f"{mode}: final body differs ({len(have_body)} vs {len(want_body)})")
    return problems
