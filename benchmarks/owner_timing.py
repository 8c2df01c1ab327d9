"""Can a caller tell "another caller's job" from "a signed, unknown id" by timing?

::

    python -m benchmarks.owner_timing [--rounds 20000] [--store sqlite:///tmp/t.db] [--loopback]

In-process (no sockets, so no network noise hides a difference): a WSGI app
behind the middleware with a memory store (or ``--store``); Alice has a job; Bob reads its
status URL (a), and a validly signed URL of an id that does not exist (b).
Both answer the same 404. The requests alternate, each is timed, and the
report gives the medians and how often the best single threshold on one
request's time tells (a) from (b): 50% is a coin toss, 100% always right.
With ``--loopback`` the same app is served on 127.0.0.1 (``wsgiref``, one
connection per request, as an outside caller sees it) and each request is timed
by the client, from connect to the last byte.
Not a test: nothing asserts a timing.
"""

from __future__ import annotations

import argparse
import io
import secrets
import statistics
import time
from typing import Any

from async_accept.wsgi import AsyncAcceptMiddleware

KEY = secrets.token_urlsafe(32)


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]


def _environ(method: str, path: str, auth: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_AUTHORIZATION": auth,
        "CONTENT_LENGTH": "0",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
    }


def _call(mw: AsyncAcceptMiddleware, environ: dict[str, Any]) -> tuple[str, bytes]:
    out: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> None:
        out.append(status)

    body = b"".join(mw(environ, start_response))
    return out[0], body


def _serve(mw: AsyncAcceptMiddleware) -> tuple[Any, int]:
    """Serve ``mw`` on a free loopback port from a thread; the server and its port."""
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = make_server("127.0.0.1", 0, mw, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])


def _get_over_loopback(port: int, path: str, auth: str) -> int:
    """One GET on a new connection: its status; the caller times it."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": auth})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def separation(a: list[int], b: list[int]) -> float:
    """Best balanced accuracy of one threshold telling samples of ``a`` from ``b``."""
    labelled = sorted([(t, 0) for t in a] + [(t, 1) for t in b])
    n_a, n_b = len(a), len(b)
    below_a = below_b = 0
    best = 0.5
    for _, label in labelled:
        if label == 0:
            below_a += 1
        else:
            below_b += 1
        # "a is faster": below the threshold -> a
        acc = (below_a / n_a + (n_b - below_b) / n_b) / 2
        best = max(best, acc, 1 - acc)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument("--store", default="memory://", help="a store URL (default memory://)")
    parser.add_argument("--loopback", action="store_true", help="over HTTP on 127.0.0.1")
    args = parser.parse_args(argv)
    mw = AsyncAcceptMiddleware(
        _app,
        secret_key=KEY,
        store=args.store,
        executor="thread",
        routes={"POST /work": {}},
        sweep_interval=None,
    )
    try:
        status, body = _call(mw, _environ("POST", "/work", "Bearer alice"))
        assert status.startswith("202"), (status, body)
        import json

        url = json.loads(body)["status_url"]
        unknown = mw.runtime.engine.signer.sign(secrets.token_urlsafe(16))
        other = url
        fresh = f"/_jobs/{unknown}"
        times: dict[str, list[int]] = {"other": [], "unknown": []}
        server, port = _serve(mw) if args.loopback else (None, 0)
        for i in range(args.rounds * 2):
            name, path = ("other", other) if i % 2 == 0 else ("unknown", fresh)
            t0 = time.perf_counter_ns()
            if server is not None:
                code = _get_over_loopback(port, path, "Bearer bob")
            else:
                status, _ = _call(mw, _environ("GET", path, "Bearer bob"))
                code = int(status.split()[0])
            times[name].append(time.perf_counter_ns() - t0)
            assert code == 404, code
        if server is not None:
            server.shutdown()
            server.server_close()
        warm = args.rounds // 10  # the first reads warm caches
        a, b = times["other"][warm:], times["unknown"][warm:]
        where = "over loopback HTTP" if args.loopback else "in-process"
        print(f"rounds: {len(a)} each (after {warm} warm-up), {where}, store {args.store}")
        print(f"median, another caller's job: {statistics.median(a) / 1000:.1f} us")
        print(f"median, signed unknown id:    {statistics.median(b) / 1000:.1f} us")
        print(f"one request tells them apart: {separation(a, b) * 100:.1f}% of the time")
    finally:
        mw.runtime.shutdown()
        mw.store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
