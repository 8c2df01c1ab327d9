"""Which value of a cookie the app sees: each framework's own rule.

A ``Cookie`` header may name a cookie twice (``session=a; session=b``, or in
two header lines). Frameworks disagree on which one the app reads:

- Starlette/FastAPI and Django: every header line, the *last* value wins
  (``cookies.update(cookie_parser(line))``; Django's ``parse_cookie`` fills
  a dict from ``HTTP_COOKIE``: under WSGI decoded as UTF-8, under ASGI the
  lines joined with ``","`` as latin-1);
- Litestar: the *first* header line only, its last value;
- Werkzeug (Flask) and Quart: every line, the *first* value
  (``MultiDict.get``);
- Falcon: the *first* value (``req.cookies``).

The owner of a job is bound to the session cookie the app itself reads, so
each reader below asks the framework's own parser. A reader gets the
request's ``Cookie`` header lines and returns name -> value; it never raises
(anything the parser refuses reads as no cookies). Without a known
framework, the engine binds every value of a repeated session cookie (it can
only narrow access).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["CookieReader", "reader_for_app"]

#: the Cookie header lines of a request -> the cookies the app sees
CookieReader = Callable[[Sequence[bytes]], Mapping[str, str]]


def _text(lines: Sequence[bytes]) -> list[str]:
    return [line.decode("latin-1") for line in lines]


def starlette_cookies(lines: Sequence[bytes]) -> Mapping[str, str]:
    """What ``starlette.requests.Request.cookies`` reads."""
    from starlette.requests import cookie_parser

    out: dict[str, str] = {}
    for line in _text(lines):
        out.update(cookie_parser(line))
    return out


def litestar_cookies(lines: Sequence[bytes]) -> Mapping[str, str]:
    """What Litestar's ``connection.cookies`` reads (the first header line)."""
    from litestar._parsers import parse_cookie_string

    return parse_cookie_string(_text(lines)[0]) if lines else {}


def django_cookies(lines: Sequence[bytes]) -> Mapping[str, str]:
    """What Django's ``request.COOKIES`` reads under WSGI: ``HTTP_COOKIE`` (one
    line, as the server joined them) decoded as UTF-8 with replacement."""
    from django.http.cookie import parse_cookie

    parsed: dict[str, str] = parse_cookie(
        "; ".join(line.decode("utf-8", "replace") for line in lines)
    )
    return parsed


def django_asgi_cookies(lines: Sequence[bytes]) -> Mapping[str, str]:
    """What Django's ``request.COOKIES`` reads under ASGI: the header lines, which
    ``ASGIRequest`` joins with ``","`` into one ``HTTP_COOKIE``, as latin-1."""
    from django.http.cookie import parse_cookie

    parsed: dict[str, str] = parse_cookie(",".join(_text(lines)))
    return parsed


def werkzeug_cookies(lines: Sequence[bytes]) -> Mapping[str, str]:
    """What Werkzeug's ``request.cookies.get`` reads (Flask under WSGI, Quart):
    every line joined with ``";"``, latin-1 text, the first value of a name."""
    from werkzeug.sansio.http import parse_cookie

    return parse_cookie(";".join(_text(lines))).to_dict()


def falcon_cookies(lines: Sequence[bytes]) -> Mapping[str, str]:
    """What Falcon's ``req.cookies`` reads (the first value of each name)."""
    from falcon.request_helpers import _parse_cookie_header

    parsed = _parse_cookie_header(",".join(_text(lines)))
    return {name: values[0] for name, values in parsed.items() if values}


_BY_PACKAGE: dict[str, CookieReader] = {
    "starlette": starlette_cookies,
    "fastapi": starlette_cookies,
    "litestar": litestar_cookies,
    "django": django_cookies,
    "flask": werkzeug_cookies,
    "werkzeug": werkzeug_cookies,
    "quart": werkzeug_cookies,
    "falcon": falcon_cookies,
}


def reader_for_app(app: Any) -> CookieReader | None:
    """The reader of the framework ``app`` belongs to (a bound ``wsgi_app`` by its
    object; Starlette's next middleware by its package); None when unknown."""
    owner = getattr(app, "__self__", app)
    package = (getattr(type(owner), "__module__", "") or "").split(".")[0]
    return _BY_PACKAGE.get(package)


def read_cookies(reader: CookieReader, lines: Sequence[bytes]) -> Mapping[str, str]:
    """``reader(lines)``, or no cookies when the framework's parser refuses them."""
    try:
        return reader(lines)
    except Exception:  # the app can't read them either (Werkzeug on non-UTF-8)
        return {}
