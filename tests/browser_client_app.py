"""The README's two browser snippets (``waitForJob`` over EventSource and the ``poll``
loop over fetch) served on a page of an app, for tests/test_clients_browser.py.

``uvicorn tests.browser_client_app:starlette_app`` or
``gunicorn tests.browser_client_app:flask_app``; ``ASYNC_ACCEPT_STORE`` names the store.

``GET /`` sets a session cookie (the owner, for EventSource, which can't send an
Authorization header); ``GET /sse`` and ``GET /poll`` are pages whose script runs one
snippet against ``POST /reports`` (about 1.5 s, three progress steps) and leaves the
outcome in ``window.outcome``.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import Any

from async_accept import long_running, report_progress

SECRET = "browser-client-secret-0123456789abcdef"
STEPS = 3
SECONDS = 1.5
README = Path(__file__).resolve().parent.parent / "README.md"


def readme_snippets() -> str:
    """The README's ```js blocks, as written there."""
    blocks = re.findall(r"```js\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 2, "the README has the EventSource and the fetch-loop snippets"
    return "\n".join(blocks)


DRIVERS = {
    "sse": """
      const res = await fetch("/reports", {
        method: "POST", headers: {"Content-Type": "application/json"}, body: '{"title": "sse"}'});
      if (res.status !== 202) throw new Error("accept answered " + res.status);
      const final = await waitForJob(new URL(res.headers.get("Location"), res.url),
                                     (job) => window.progress.push(job.percent_complete));
      return final;""",
    "poll": """
      const headers = {Authorization: "Bearer alice", "Content-Type": "application/json"};
      const body = '{"title": "poll"}';
      return await poll(await fetch("/reports", {method: "POST", body, headers}), {headers});""",
}


def page(kind: str) -> str:
    return f"""<!doctype html><html><head><title>client</title></head><body>
<script>
{readme_snippets()}
window.progress = [];
window.outcome = null;
(async () => {{
  try {{
    const final = await (async () => {{ {DRIVERS[kind]} }})();
    window.outcome = {{status: final.status, redirected: final.redirected,
                      body: await final.json()}};
  }} catch (e) {{
    window.outcome = {{error: String(e), job: e.job || null}};
  }}
}})();
</script></body></html>"""


def _options() -> dict[str, Any]:
    return {
        "secret_key": SECRET,
        "store": os.environ["ASYNC_ACCEPT_STORE"],
        "session_cookies": ["session"],
        "heartbeat_interval": 0.2,
        "wsgi_max_wait": 1,
    }


def build_starlette() -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    from async_accept.asgi import AsyncAcceptMiddleware

    @long_running(sla=30)
    async def reports(request: Request) -> Response:
        title = (await request.json())["title"]
        for step in range(1, STEPS + 1):
            await asyncio.sleep(SECONDS / STEPS)
            report_progress(100 * step / STEPS, message=f"step {step}")
        return JSONResponse({"title": title, "framework": "starlette"})

    async def home(request: Request) -> Response:
        response = HTMLResponse("<!doctype html><title>home</title>")
        response.set_cookie("session", "browser-session-1", httponly=True)
        return response

    async def sse(request: Request) -> Response:
        return HTMLResponse(page("sse"))

    async def poll(request: Request) -> Response:
        return HTMLResponse(page("poll"))

    return Starlette(
        routes=[
            Route("/", home),
            Route("/sse", sse),
            Route("/poll", poll),
            Route("/reports", reports, methods=["POST"]),
        ],
        middleware=[Middleware(AsyncAcceptMiddleware, **_options())],
    )


def build_flask() -> Any:
    from flask import Flask, Response, jsonify, request

    from async_accept.flask import AsyncAccept

    app = Flask(__name__)

    @app.post("/reports")
    @long_running(sla=30)
    def reports() -> Response:
        title = (request.get_json() or {})["title"]
        for step in range(1, STEPS + 1):
            time.sleep(SECONDS / STEPS)
            report_progress(100 * step / STEPS, message=f"step {step}")
        return jsonify(title=title, framework="flask")

    @app.get("/")
    def home() -> Response:
        response = Response("<!doctype html><title>home</title>", mimetype="text/html")
        response.set_cookie("session", "browser-session-1", httponly=True)
        return response

    @app.get("/sse")
    def sse() -> Response:
        return Response(page("sse"), mimetype="text/html")

    @app.get("/poll")
    def poll() -> Response:
        return Response(page("poll"), mimetype="text/html")

    AsyncAccept(app, **_options())
    return app


def __getattr__(name: str) -> Any:
    """Build the app a server asks for (``starlette_app`` / ``flask_app``) on import."""
    if name == "starlette_app":
        return build_starlette()
    if name == "flask_app":
        return build_flask()
    raise AttributeError(name)
