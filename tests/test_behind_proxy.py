"""Behind a real nginx (own config on a loopback port, ``proxy_read_timeout 3s``):
Starlette/uvicorn under ``--root-path`` and Flask/gunicorn with ``X-Forwarded-Prefix``
and Werkzeug's ProxyFix in either order."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.servers import Server, base_env, gunicorn, uvicorn
from tests.services import IN_CI, free_port

pytestmark = pytest.mark.slow

ALICE = {"Authorization": "Bearer alice"}
APT = "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nginx-light"

#: the sub-path nginx serves each app under
MOUNTS = ("star", "flask-before", "flask-after")


def _nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
    )
    if found is None:
        msg = f"nginx is not installed; install Debian's package: {APT}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return found


def _location(mount: str, port: int) -> str:
    return f"""
    location /{mount}/ {{
      proxy_pass http://127.0.0.1:{port}/;
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Forwarded-Prefix /{mount};
    }}"""


def nginx_config(tmp: Path, port: int, upstreams: dict[str, int]) -> str:
    """The whole nginx.conf: foreground, every path in ``tmp``, one location per app."""
    user = "user root root;\n" if os.geteuid() == 0 else ""
    locations = "".join(_location(m, p) for m, p in upstreams.items())
    return f"""{user}daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log {tmp}/access.log;
  client_body_temp_path {tmp}/client_body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  proxy_read_timeout 3s;
  client_max_body_size 10m;
  proxy_http_version 1.1;
  proxy_request_buffering off;
  server {{
    listen 127.0.0.1:{port};{locations}
  }}
}}
"""


@dataclass
class Proxy:
    base: str
    direct: dict[str, Server]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    binary = _nginx_binary()
    tmp = tmp_path_factory.mktemp("nginx")
    env = base_env(ASYNC_ACCEPT_STORE=f"sqlite:///{tmp / 'jobs.db'}")
    star = uvicorn("tests.proxy_apps:asgi_app", env, tmp / "star.log")
    star.argv += ["--root-path", "/star"]
    servers = {
        "star": star,
        "flask-before": gunicorn(
            "tests.proxy_apps:wsgi_app", {**env, "PROXY_FIX": "before"}, tmp / "fb.log"
        ),
        "flask-after": gunicorn(
            "tests.proxy_apps:wsgi_app", {**env, "PROXY_FIX": "after"}, tmp / "fa.log"
        ),
    }
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_config(tmp, port, {m: s.port for m, s in servers.items()}))
    nginx: subprocess.Popen[bytes] | None = None
    try:
        for server in servers.values():
            server.start()
        nginx = subprocess.Popen(
            [binary, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            assert nginx.poll() is None, (tmp / "error.log").read_text()
            try:
                if httpx.get(base + "/star/hello", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp / "error.log").read_text()
            time.sleep(0.1)
        yield Proxy(base, servers)
    finally:
        if nginx is not None:
            nginx.terminate()
            try:
                nginx.wait(10)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait(10)
        for server in servers.values():
            server.stop()


def _result_through(proxy: Proxy, mount: str, location: str, timeout: float = 30) -> httpx.Response:
    """Poll the status URL through nginx until its 303, check the headers on the
    way, then follow the 303 (through nginx too) and return the result."""
    assert location.startswith(f"/{mount}/_jobs/"), location
    deadline = time.monotonic() + timeout
    saw_pending = False
    while True:
        r = httpx.get(proxy.base + location, headers=ALICE, timeout=10)
        if r.status_code == 303:
            break
        assert r.status_code == 200, (r.status_code, r.text)
        assert r.json()["status"] in ("queued", "processing"), r.text
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["cache-control"] == "no-store"
        saw_pending = True
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)
    assert "no-store" in r.headers["cache-control"]
    target = r.headers["location"]
    assert target.startswith(f"/{mount}/"), target
    result = httpx.get(proxy.base + target, headers=ALICE, timeout=10)
    assert result.status_code == 200, result.text
    result.extensions["saw_pending"] = saw_pending
    return result


@pytest.mark.parametrize("mount", MOUNTS)
def test_a_long_job_gets_202_not_the_proxys_504(proxy: Proxy, mount: str) -> None:
    """A 5 s job through nginx (3 s read timeout) is a prompt 202 whose status URL,
    303 and result all work through the proxy, Retry-After and Cache-Control included."""
    started = time.monotonic()
    r = httpx.post(f"{proxy.base}/{mount}/slow", headers=ALICE, timeout=10)
    assert r.status_code == 202, (r.status_code, r.text)
    assert time.monotonic() - started < 3
    assert r.headers["retry-after"]
    result = _result_through(proxy, mount, r.headers["location"])
    assert result.text == "slow done"
    assert result.extensions["saw_pending"]  # the status URL answered while the job ran


@pytest.mark.parametrize("mount", MOUNTS)
def test_a_chunked_5mb_upload_reaches_the_handler_intact(proxy: Proxy, mount: str) -> None:
    """A 5 MB body sent chunked (no Content-Length) through nginx reaches the job's
    handler byte for byte: the result is its sha256."""
    body = os.urandom(5 * 1024 * 1024)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 256 * 1024):
            yield body[i : i + 256 * 1024]

    r = httpx.post(f"{proxy.base}/{mount}/upload", content=chunks(), headers=ALICE, timeout=30)
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in r.request.headers
    assert r.status_code == 202, (r.status_code, r.text)
    result = _result_through(proxy, mount, r.headers["location"])
    assert result.text == hashlib.sha256(body).hexdigest()


def test_a_prefer_wait_longer_than_the_proxy_allows_ends_in_its_504(proxy: Proxy) -> None:
    """``Prefer: wait=10`` on a 5 s job through a 3 s proxy ends in nginx's 504
    (why max_wait belongs below the proxy's timeout)."""
    r = httpx.post(
        f"{proxy.base}/star/slow", headers={**ALICE, "Prefer": "respond-async, wait=10"}, timeout=15
    )
    assert r.status_code == 504
