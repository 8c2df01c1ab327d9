"""Strong keys only, and the smaller sharp edges of issue 13.

``secret_key`` under 32 bytes and webhook secrets under 24 bytes are refused
at construction with a message naming how to make one; ``/result`` is never
cached; the Python client keeps credentials at their own origin.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from async_accept.client import poll
from async_accept.errors import ConfigurationError

GOOD = "k" * 32


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Cache-Control", "max-age=60")])
    return [b"done"]


def _wsgi(**options: Any) -> Any:
    from async_accept.wsgi import AsyncAcceptMiddleware

    opts: dict[str, Any] = {
        "secret_key": GOOD,
        "store": "memory://",
        "executor": "thread",
        "routes": {"POST /work": {}},
    }
    opts.update(options)
    return AsyncAcceptMiddleware(_app, **opts)


@pytest.mark.parametrize("key", ["x", "change-me", "a" * 31, b"\x00" * 31, ["k" * 32, "short"]])
def test_short_secret_key_is_refused(key: Any) -> None:
    """A secret_key (or any rotated key) under 32 bytes is a ConfigurationError naming the fix."""
    with pytest.raises(ConfigurationError, match="python -m async_accept secret"):
        _wsgi(secret_key=key)


@pytest.mark.parametrize("key", ["k" * 32, b"\x01" * 32, ["n" * 40, "o" * 32]])
def test_secret_key_of_32_bytes_or_more_is_taken(key: Any) -> None:
    """Keys of 32 bytes and more (and lists of them) are fine."""
    mw = _wsgi(secret_key=key)
    mw.runtime.shutdown()


def test_module_prints_a_fresh_secret() -> None:
    """`python -m async_accept secret` prints a new random key of at least 32 bytes."""
    made = [
        subprocess.run(
            [sys.executable, "-m", "async_accept", "secret"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
        for _ in range(2)
    ]
    assert len(made[0].encode()) >= 32
    assert made[0] != made[1]
    _wsgi(secret_key=made[0]).runtime.shutdown()


@pytest.mark.parametrize("nbytes", [1, 16, 23])
def test_short_webhook_secret_is_refused(nbytes: int) -> None:
    """A webhook secret under 24 bytes is refused (Standard Webhooks asks for 24 to 64)."""
    secret = "whsec_" + base64.b64encode(b"s" * nbytes).decode()
    with pytest.raises(ConfigurationError, match="24"):
        _wsgi(webhook_secret=secret, webhook_url="https://hooks.example/x")


def test_webhook_secret_of_24_bytes_is_taken() -> None:
    """A webhook secret of 24 bytes or more is fine."""
    secret = "whsec_" + base64.b64encode(b"s" * 24).decode()
    _wsgi(webhook_secret=secret, webhook_url="https://hooks.example/x").runtime.shutdown()


def test_result_is_never_cached() -> None:
    """The stored response at /result answers with Cache-Control: no-store."""
    mw = _wsgi()
    try:
        with httpx.Client(
            transport=httpx.WSGITransport(app=mw), base_url="http://testserver"
        ) as client:
            auth = {"Authorization": "Bearer alice"}
            url = client.post("/work", headers=auth).headers["location"]
            deadline = time.monotonic() + 10
            while client.get(url, headers=auth).status_code != 303:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            result = client.get(url + "/result", headers=auth)
            assert result.status_code == 200
            assert result.text == "done"
            assert result.headers.get_list("cache-control") == ["no-store"]
    finally:
        mw.runtime.shutdown()


def _two_origins() -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "api.example" and request.url.path == "/_jobs/tok":
            return httpx.Response(
                303,
                headers={"Location": "https://files.example/report/1"},
                json={"status": "completed"},
            )
        return httpx.Response(200, text="the report")

    return httpx.MockTransport(handler), seen


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer alice"}, {"Cookie": "session=1"}, {"Proxy-Authorization": "x"}],
)
def test_client_keeps_credentials_at_their_origin(headers: dict[str, str]) -> None:
    """poll() sends the caller's credentials to the job's origin only."""
    transport, seen = _two_origins()
    with httpx.Client(transport=transport) as client:
        result = poll("https://api.example/_jobs/tok", client=client, headers=headers)
    assert result.text == "the report"
    name = next(iter(headers))
    assert seen[0].headers.get(name) == headers[name]
    assert seen[-1].url.host == "files.example"
    assert name not in seen[-1].headers


@pytest.mark.parametrize("where", ["X-API-Key", "Api-Key", "client-default"])
def test_client_strips_every_credential_cross_origin(where: str) -> None:
    """API keys, and credentials set on the httpx client itself, stay at the job's origin."""
    transport, seen = _two_origins()
    if where == "client-default":
        client_headers = {"Authorization": "Bearer alice"}
        name, headers = "Authorization", None
    else:
        client_headers = {}
        name, headers = where, {where: "key-1"}
    with httpx.Client(transport=transport, headers=client_headers) as client:
        poll("https://api.example/_jobs/tok", client=client, headers=headers)
    assert name in seen[0].headers
    assert name not in seen[-1].headers


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example/cb/..;/admin",
        "https://hooks.example/cb/%2e%2e/admin",
        "https://hooks.example/cb/%2F..%2Fadmin",
        "https://hooks.example/cb/..%2Fadmin",
        "https://hooks.example/cb/%252e%252e/admin",
        "https://hooks.example/cb/.%2e;x=1/admin",
        "https://hooks.example/cb/..%5Cadmin",
    ],
)
def test_callback_allow_list_prefix_cannot_be_walked_out_of(url: str) -> None:
    """An allowed URL prefix never admits a path that a server could read as leaving it."""
    from async_accept.webhooks import WebhookPolicy

    policy = WebhookPolicy(allow=["https://hooks.example/cb"])
    assert policy.allows("https://hooks.example/cb/order-7")
    assert not policy.allows(url)
