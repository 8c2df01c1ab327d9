"""The README's snippets work when pasted: every Python block compiles, the
quick-start apps import and construct with ASYNC_ACCEPT_SECRET_KEY set (and
answer as the README says), and the quick-start shell commands run."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SECRET = "test-secret-key-0123456789abcdef"


def blocks(lang: str) -> list[tuple[int, str]]:
    """The README's fenced blocks of ``lang``: (line number, code)."""
    out: list[tuple[int, str]] = []
    for m in re.finditer(rf"^```{lang}\n(.*?)^```", README, re.MULTILINE | re.DOTALL):
        out.append((README.count("\n", 0, m.start()) + 2, m.group(1)))
    return out


PYTHON = blocks("python")
SHELL = blocks("(?:bash|sh|console)")


def _block(lang_blocks: list[tuple[int, str]], *needles: str) -> str:
    found = [code for _, code in lang_blocks if all(n in code for n in needles)]
    assert len(found) == 1, f"expected one block with {needles}, found {len(found)}"
    return found[0]


def test_readme_has_its_snippets() -> None:
    """The extraction finds the README's Python and shell blocks."""
    assert len(PYTHON) >= 8 and len(SHELL) >= 8


@pytest.mark.parametrize("line,code", PYTHON, ids=[f"line{n}" for n, _ in PYTHON])
def test_every_python_block_compiles(line: int, code: str) -> None:
    """Each ```python block of the README is valid Python."""
    compile(code, f"README.md:{line}", "exec")


def _curl(command: str) -> tuple[str, str, dict[str, str], str | None]:
    """A pasted ``curl`` command as (method, path, headers, body)."""
    args = shlex.split(command.replace("\\\n", " "))
    assert args[0] == "curl"
    method, url, headers, data = "GET", "", {}, None
    it = iter(args[1:])
    for a in it:
        if a == "-X":
            method = next(it)
        elif a == "-H":
            k, _, v = next(it).partition(":")
            headers[k.strip()] = v.strip()
        elif a == "-d":
            data = next(it)
            method = "POST" if method == "GET" else method
        elif not a.startswith("-"):
            url = a
    return method, "/" + url.split("/", 1)[1], headers, data


def test_fastapi_quickstart_answers_as_the_readme_shows(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The FastAPI quick start constructs from the env key, and its curl session
    (POST -> 202 with Location and Retry-After -> status -> 303 to the result) runs."""
    from starlette.testclient import TestClient

    monkeypatch.setenv("ASYNC_ACCEPT_SECRET_KEY", SECRET)
    monkeypatch.chdir(tmp_path)
    ns: dict[str, Any] = {"__name__": "readme_quickstart"}
    exec(_block(PYTHON, "FastAPI()", "create_report"), ns)
    session = _block(SHELL, "curl -i -X POST localhost:8000/reports")
    commands = re.findall(r"^\$ (curl .*?)(?=\n(?!\s))", session, re.MULTILINE | re.DOTALL)
    assert len(commands) == 3
    with TestClient(ns["app"], follow_redirects=False) as client:
        # respond-async: the snippet's "slow work" is `...`, so a hybrid wait would answer 200
        method, path, headers, data = _curl(commands[0])
        r = client.request(
            method, path, headers={**headers, "Prefer": "respond-async"}, content=data
        )
        assert r.status_code == 202, r.text
        assert "retry-after" in r.headers
        location = r.headers["location"]
        _, _, headers, _ = _curl(commands[1])
        deadline = time.monotonic() + 15
        while (s := client.get(location, headers=headers)).status_code != 303:
            assert s.status_code == 200 and time.monotonic() < deadline, s.text
            time.sleep(0.05)
        assert s.headers["location"] == location + "/result"
        result = client.get(s.headers["location"], headers=headers)
        assert result.status_code == 200 and result.json() == {"report": "done"}


def test_fastapi_documented_block_applies_to_the_quickstart(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """document_async_accept from the README runs on the quick-start app (its schema builds)."""
    monkeypatch.setenv("ASYNC_ACCEPT_SECRET_KEY", SECRET)
    monkeypatch.chdir(tmp_path)
    ns: dict[str, Any] = {"__name__": "readme_quickstart"}
    exec(_block(PYTHON, "FastAPI()", "create_report"), ns)
    code = _block(PYTHON, "document_async_accept(app")
    code = code.replace('app.add_middleware(AsyncAcceptMiddleware, secret_key="...")', "")
    exec(code, ns)
    assert "/reports" in ns["app"].openapi()["paths"]


def test_flask_quickstart_constructs_and_accepts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The Flask quick start constructs with its SECRET_KEY and turns POST /reports into a job."""
    monkeypatch.setenv("SECRET_KEY", SECRET)
    monkeypatch.chdir(tmp_path)
    ns: dict[str, Any] = {"__name__": "readme_flask"}
    exec(_block(PYTHON, "Flask(__name__)", "AsyncAccept(app)"), ns)
    client = ns["app"].test_client()
    r = client.post("/reports", headers={"Authorization": "Bearer me", "Prefer": "respond-async"})
    assert r.status_code == 202 and r.headers["location"].startswith("/_jobs/")


@pytest.mark.parametrize("needle", ["from async_accept.asgi", "from async_accept.wsgi"])
def test_pattern_wrapping_blocks_construct(
    needle: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The routes=[...] wrapping snippets construct around an ``application``."""
    monkeypatch.setenv("ASYNC_ACCEPT_SECRET_KEY", SECRET)
    monkeypatch.chdir(tmp_path)

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None: ...

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        return []

    app = asgi_app if "asgi" in needle else wsgi_app
    ns: dict[str, Any] = {"application": app}
    exec(_block(PYTHON, needle, "application = AsyncAcceptMiddleware("), ns)
    assert ns["application"] is not app


def test_helpers_block_runs_outside_a_job() -> None:
    """The report_progress/current_job snippet runs as pasted outside a job (no-op, None)."""
    ns: dict[str, Any] = {}
    exec(_block(PYTHON, "report_progress(40"), ns)
    assert ns["job"] is None


def test_secret_command_prints_a_key() -> None:
    """``python -m async_accept secret`` (the README's export line) prints a usable key."""
    line = _block(SHELL, "export ASYNC_ACCEPT_SECRET_KEY")
    inner = re.search(r"\$\((.*)\)", line)
    assert inner is not None
    args = shlex.split(inner.group(1))
    assert args[:2] == ["python", "-m"]
    out = subprocess.run([sys.executable, *args[1:]], capture_output=True, text=True, check=True)
    assert len(out.stdout.strip()) >= 32
