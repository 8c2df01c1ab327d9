"""Packaging promises: lazy optional imports, py.typed, strict typing and lint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OPTIONAL = (
    "starlette",
    "fastapi",
    "flask",
    "django",
    "redis",
    "celery",
    "rq",
    "psycopg",
    "psycopg_pool",
    "httpx",
    "opentelemetry",
    "litestar",
    "quart",
    "falcon",
    "uvicorn",
    "gunicorn",
)


def test_import_pulls_no_framework_or_backend() -> None:
    """`import async_accept` (and its front doors) imports no framework or backend."""
    code = (
        "import sys, async_accept, async_accept.asgi, async_accept.wsgi;"
        f"bad = [m for m in {OPTIONAL!r} if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == ""


def test_py_typed_is_shipped() -> None:
    """The package ships its py.typed marker."""
    import async_accept

    assert (Path(async_accept.__file__).parent / "py.typed").is_file()


def _tool(name: str) -> str:
    path = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return path


def test_mypy_strict_is_clean() -> None:
    """mypy --strict (config in pyproject.toml) reports no error."""
    out = subprocess.run([_tool("mypy")], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_is_clean() -> None:
    """ruff check and ruff format --check pass on the whole tree."""
    check = subprocess.run([_tool("ruff"), "check", "."], capture_output=True, text=True, cwd=ROOT)
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run(
        [_tool("ruff"), "format", "--check", "."], capture_output=True, text=True, cwd=ROOT
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
