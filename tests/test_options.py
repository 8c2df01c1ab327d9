"""Every option is declared once in async_accept.options; the middlewares are typed from it."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from async_accept import config, options
from async_accept.errors import ConfigurationError
from async_accept.options import DEFAULTS, DOCS, OPTION_NAMES, Options, OptionsKwargs, build_options

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s" * 32


def test_typed_kwargs_name_every_option_and_nothing_else() -> None:
    """OptionsKwargs (the middlewares' keyword types) names exactly the declared options."""
    assert set(OptionsKwargs.__annotations__) == set(OPTION_NAMES)
    assert len(OPTION_NAMES) == len(set(OPTION_NAMES))


def test_every_option_has_a_default_and_a_doc_line() -> None:
    """Each option field carries its default and a non-empty doc line."""
    assert set(DEFAULTS) == set(DOCS) == set(OPTION_NAMES)
    assert all(DOCS[name].strip() for name in OPTION_NAMES)
    assert DEFAULTS["store"] == "sqlite:///async_accept_jobs.db"
    assert DEFAULTS["prefix"] == "/_jobs"


def test_build_options_signature_is_generated_from_the_fields() -> None:
    """inspect.signature(build_options) lists every option, keyword-only, with its default."""
    params = inspect.signature(build_options).parameters
    assert tuple(params) == OPTION_NAMES
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    assert {name: p.default for name, p in params.items()} == DEFAULTS


def test_defaults_build_the_documented_options() -> None:
    """build_options with only a key gives the defaults, normalized."""
    opts = build_options(secret_key=SECRET)
    assert opts.secrets == [SECRET.encode()]
    assert opts.routes == []
    assert opts.callback_header == "callback-url"
    assert opts.webhook_dispatcher_options == {}
    assert opts.default_route.sla == 60.0 and opts.default_route.max_wait == 25.0
    assert opts.ttl == 86400.0 and isinstance(opts.ttl, float)


def test_options_are_frozen() -> None:
    """Options can't be changed after validation."""
    opts = build_options(secret_key=SECRET)
    with pytest.raises(AttributeError):
        opts.ttl = 5.0  # type: ignore[misc]


def test_unknown_option_is_a_type_error_naming_it() -> None:
    """A misspelt keyword raises TypeError naming it, as a keyword-only function would."""
    with pytest.raises(TypeError, match="'secret_kye'"):
        build_options(secret_kye=SECRET)


def test_cross_checks_still_name_the_fix() -> None:
    """Checks of several options together still run (lost vs heartbeat, health_token)."""
    with pytest.raises(ConfigurationError, match="worker_lost_after=2 must be larger"):
        build_options(secret_key=SECRET, worker_lost_after=2, heartbeat_interval=2)
    with pytest.raises(ConfigurationError, match="only used with health='auth'"):
        build_options(secret_key=SECRET, health="on", health_token="t" * 16)


def test_config_module_keeps_its_names() -> None:
    """async_accept.config still exports what it did, from async_accept.options."""
    assert config.Options is Options and config.build_options is build_options
    assert config.ENV_SECRET == options.ENV_SECRET
    assert config.check_route_webhook is options.check_route_webhook


def test_field_types_resolve() -> None:
    """Every Options field's annotation resolves (no stale name in the declaration)."""
    hints = get_type_hints(Options)
    assert {f.name for f in fields(Options)} <= set(hints)


def _mypy(path: Path) -> subprocess.CompletedProcess[str]:
    mypy = shutil.which("mypy", path=os.path.dirname(sys.executable)) or shutil.which("mypy")
    if mypy is None:
        pytest.fail("mypy is not installed: pip install -e '.[test]'")
    return subprocess.run(
        [mypy, "--strict", "--no-error-summary", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )


def test_add_middleware_type_checks_under_mypy_strict() -> None:
    """app.add_middleware(AsyncAcceptMiddleware, secret_key=...) passes mypy --strict."""
    out = _mypy(ROOT / "tests" / "typing" / "add_middleware.py")
    assert out.returncode == 0, out.stdout + out.stderr


def test_mistyped_or_misspelt_option_fails_mypy() -> None:
    """mypy reports a wrongly typed option and a misspelt one."""
    out = _mypy(ROOT / "tests" / "typing" / "bad_option.py")
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert any("bad_option.py:10:" in line for line in lines), out.stdout
    assert any("bad_option.py:11:" in line for line in lines), out.stdout


def test_readme_documents_every_option() -> None:
    """Every option declared in options.py is named in the README."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    missing = [name for name in OPTION_NAMES if f"`{name}`" not in readme]
    assert missing == []


def test_middlewares_take_app_by_keyword() -> None:
    """Starlette before 0.38 builds middleware as cls(app=app, **options): app is a keyword too."""
    from async_accept.asgi import AsyncAcceptMiddleware
    from async_accept.wsgi import AsyncAcceptMiddleware as WSGIMiddleware

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        return None

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        return [b""]

    assert AsyncAcceptMiddleware(app=asgi_app, secret_key=SECRET, store="memory://").app is asgi_app
    assert WSGIMiddleware(app=wsgi_app, secret_key=SECRET, store="memory://").app is wsgi_app


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sla": 60, "ttl": 120},
        {"sla": 10, "ttl": 100, "routes": {"POST /long": {"sla": 50}}},
    ],
)
def test_a_deadline_past_the_ttl_is_refused_at_construction(kwargs: dict[str, object]) -> None:
    """2 x sla (the default's or a route pattern's) must be below ttl, else ConfigurationError."""
    with pytest.raises(ConfigurationError, match="2 x sla must be below ttl"):
        options.build_options(secret_key="k" * 32, **kwargs)


def test_a_deadline_below_the_ttl_is_accepted() -> None:
    """sla=59 with ttl=120 is fine (the job ends before it is purged)."""
    opts = options.build_options(secret_key="k" * 32, sla=59, ttl=120)
    assert (opts.sla, opts.ttl) == (59.0, 120.0)
