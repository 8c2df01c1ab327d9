"""The FastAPI example's OpenAPI document holds up against third-party tools:
schemathesis (every check, in-process over ASGI) finds no mismatch between the
document and the answers, and openapi-python-client generates a client from it
that builds and imports."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SECRET = "test-secret-key-0123456789abcdef"


@pytest.fixture
def example_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The FastAPI example on a memory store, its job endpoints documented."""
    monkeypatch.setenv("ASYNC_ACCEPT_SECRET_KEY", SECRET)
    monkeypatch.setenv("ASYNC_ACCEPT_STORE", "memory://")
    sys.modules.pop("examples.fastapi_app", None)
    module = importlib.import_module("examples.fastapi_app")
    monkeypatch.setattr(module, "SECONDS", 0.05)  # the report's "slow work"
    yield module.app
    sys.modules.pop("examples.fastapi_app", None)


def test_schemathesis_finds_no_mismatch(example_app: Any) -> None:
    """schemathesis with every check, over ASGI in-process, reports no failure."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import CHECKS, load_all_checks
    from starlette.testclient import TestClient

    load_all_checks()
    every_check = CHECKS.get_all()  # the CLI's --checks all
    assert len(every_check) >= 10
    schema = schemathesis.openapi.from_asgi("/openapi.json", example_app)
    calls: list[str] = []
    with TestClient(example_app):  # lifespan: the middleware starts its runtime
        for result in schema.get_all_operations():
            operation = result.ok()

            @settings(
                max_examples=8,
                deadline=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy())
            def run(case: Any) -> None:
                case.headers = {**(case.headers or {}), "Authorization": "Bearer me"}
                if isinstance(case.query, dict):
                    # The job list's cursor is opaque, handed out in Link: rel="next";
                    # one a generator makes up is answered 400, as documented.
                    case.query.pop("cursor", None)
                case.call_and_validate(checks=every_check)
                calls.append(case.method)

            run()  # a failed check raises, naming the operation and the mismatch
    assert len(calls) > 20  # every operation was exercised


def test_idempotency_key_header_is_described(monkeypatch: pytest.MonkeyPatch) -> None:
    """A marked operation documents Idempotency-Key: 1-255 printable characters, by pattern."""
    import re

    from fastapi import FastAPI

    from async_accept import long_running
    from async_accept.engine.idempotency import parse_idempotency_key
    from async_accept.fastapi import AsyncAcceptMiddleware, document_async_accept

    monkeypatch.setenv("ASYNC_ACCEPT_SECRET_KEY", SECRET)
    app = FastAPI()

    @app.post("/things")
    @long_running(idempotency="required")
    async def create() -> dict[str, int]:
        return {"id": 1}

    app.add_middleware(AsyncAcceptMiddleware, store="memory://")
    document_async_accept(app, include_status_routes=True)
    params = app.openapi()["paths"]["/things"]["post"]["parameters"]
    (key,) = [p for p in params if p["name"] == "Idempotency-Key"]
    assert key["required"] is True
    schema = key["schema"]
    assert schema["type"] == "string" and schema["minLength"] == 1
    pattern = re.compile(schema["pattern"])
    for value in ["abc", "a" * 255, '"a b"', '"a\\"b"', "a" * 256, "a b", "a,b", '""', "é"]:
        valid = parse_idempotency_key(value.encode()) is not None
        assert bool(pattern.fullmatch(value)) is valid, value


def test_openapi_python_client_generates_a_client_that_builds(
    example_app: Any, tmp_path: Path
) -> None:
    """openapi-python-client generates a client from the example's document; it imports
    and has the job status and result operations."""
    cli = Path(sys.executable).parent / "openapi-python-client"
    if not cli.exists():
        pytest.skip("openapi-python-client is not installed")
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(example_app.openapi()), encoding="utf-8")
    out = tmp_path / "client"
    run = subprocess.run(
        [str(cli), "generate", "--path", str(spec), "--output-path", str(out), "--meta", "none"],
        capture_output=True,
        text=True,
        timeout=120,
        # its post-generation hook formats with ruff, from this environment
        env={**os.environ, "PATH": f"{cli.parent}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Warning" not in run.stdout + run.stderr, run.stdout + run.stderr
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import client.api.async_accept.async_accept_job_result as r, "
            "client.api.async_accept.async_accept_job_status as s, "
            "client.models.job as j; print(r.sync_detailed, s.sync, j.Job)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
