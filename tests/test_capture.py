"""Captured requests and responses: lossless JSON round trips and faithful replays."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from async_accept.engine.responses import strip_hop_by_hop
from async_accept.job import CapturedRequest, CapturedResponse, Job, JobStatus
from async_accept.replay import REPLAY_KEY, replay_asgi, replay_wsgi

HEADER_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
HEADER_VALUE = st.binary(max_size=60).map(
    lambda b: bytes(c for c in b if 0x20 <= c < 0x7F or c >= 0x80)
)
SEGMENT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/?#"),
    min_size=1,
    max_size=12,
)

requests = st.builds(
    CapturedRequest,
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
    path=st.lists(SEGMENT, max_size=4).map(lambda parts: "/" + "/".join(parts)),
    query_string=st.binary(max_size=40).map(lambda b: bytes(c for c in b if 0x21 <= c < 0x7F)),
    headers=st.lists(st.tuples(HEADER_NAME.map(str.encode), HEADER_VALUE), max_size=8),
    body=st.binary(max_size=2000),
    root_path=st.sampled_from(["", "/api", "/mount/v1"]),
    scheme=st.sampled_from(["http", "https"]),
    server=st.one_of(st.none(), st.tuples(st.just("127.0.0.1"), st.integers(1, 65535))),
    client=st.one_of(st.none(), st.tuples(st.just("127.0.0.1"), st.integers(1, 65535))),
)


@given(req=requests)
def test_request_json_round_trip(req: CapturedRequest) -> None:
    """Any captured request survives the store's JSON encodings byte for byte."""
    assert CapturedRequest.from_json(req.to_json()) == req
    assert CapturedRequest.from_meta_json(req.meta_json(), req.body) == req
    json.loads(req.meta_json())  # plain JSON, no pickle


@given(
    status=st.integers(100, 599),
    headers=st.lists(st.tuples(HEADER_NAME.map(str.encode), HEADER_VALUE), max_size=8),
    body=st.binary(max_size=2000),
)
def test_response_json_round_trip(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    """Any captured response survives JSON encoding byte for byte."""
    resp = CapturedResponse(status, headers, body)
    assert CapturedResponse.from_json(resp.to_json()) == resp
    assert CapturedResponse.from_meta_json(resp.meta_json(), body) == resp


def test_job_json_round_trip() -> None:
    """A job with every field set round-trips through JSON."""
    job = Job(
        id="a",
        status=JobStatus.FAILED,
        owner="o",
        created_at=1.5,
        updated_at=2.5,
        expires_at=3.5,
        deadline_at=4.5,
        sla=5.0,
        started_at=1.6,
        finished_at=2.4,
        percent=50.0,
        message="m",
        eta=3.0,
        progress_at=2.0,
        cancel_requested=True,
        worker_id="w",
        heartbeat_at=2.1,
        error={"type": "x"},
        result_status=502,
        result_location="/r",
        route="POST /x",
        idempotency_key="k",
        fingerprint="f",
        attempts=2,
        meta={"webhook": "https://example.invalid/h"},
    )
    assert Job.from_json(job.to_json()) == job


async def _echo_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    seen = {
        "method": scope["method"],
        "path": scope["path"],
        "root_path": scope["root_path"],
        "query": scope["query_string"].decode("latin-1"),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "marker": REPLAY_KEY in scope["extensions"],
        "body": body.decode("latin-1"),
    }
    out = json.dumps(seen).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
    await send({"type": "http.response.body", "body": out[:10], "more_body": True})
    await send({"type": "http.response.body", "body": out[10:]})


@settings(max_examples=60)
@given(req=requests)
def test_asgi_replay_presents_the_captured_request(req: CapturedRequest) -> None:
    """The ASGI replay hands the app the captured method, path, query, headers and body."""
    resp = asyncio.run(replay_asgi(_echo_asgi, req, "job1"))
    seen = json.loads(resp.body)
    assert resp.status == 200 and resp.headers == [(b"x-a", b"1")]
    assert seen["method"] == req.method
    assert seen["path"] == req.root_path + req.path
    assert seen["root_path"] == req.root_path
    assert seen["query"] == req.query_string.decode("latin-1")
    assert seen["headers"] == [[k.decode("latin-1"), v.decode("latin-1")] for k, v in req.headers]
    assert seen["body"] == req.body.decode("latin-1")
    assert seen["marker"] is True


def _echo_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    seen = {
        "method": environ["REQUEST_METHOD"],
        "script_name": environ["SCRIPT_NAME"],
        "path_info": environ["PATH_INFO"],
        "query": environ["QUERY_STRING"],
        "body": body.decode("latin-1"),
        "marker": environ.get(REPLAY_KEY),
    }
    start_response("201 Created", [("Location", "/x"), ("Content-Type", "application/json")])
    return [json.dumps(seen).encode()]


@settings(max_examples=60)
@given(req=requests)
def test_wsgi_replay_presents_the_captured_request(req: CapturedRequest) -> None:
    """The WSGI replay builds a PEP 3333 environ from the captured request."""
    resp = replay_wsgi(_echo_wsgi, req, "job2")
    seen = json.loads(resp.body)
    assert resp.status == 201 and resp.header(b"location") == b"/x"
    assert seen["method"] == req.method
    assert seen["script_name"].encode("latin-1").decode("utf-8") == req.root_path
    assert seen["path_info"].encode("latin-1").decode("utf-8") == req.path
    assert seen["query"] == req.query_string.decode("latin-1")
    assert seen["body"] == req.body.decode("latin-1")
    assert seen["marker"] == "job2"


def test_hop_by_hop_headers_are_dropped() -> None:
    """Hop-by-hop headers, and those named by Connection, are not stored with a result."""
    headers = [
        (b"connection", b"close, x-private"),
        (b"transfer-encoding", b"chunked"),
        (b"keep-alive", b"timeout=5"),
        (b"x-private", b"1"),
        (b"content-type", b"text/plain"),
    ]
    assert strip_hop_by_hop(headers) == [(b"content-type", b"text/plain")]
