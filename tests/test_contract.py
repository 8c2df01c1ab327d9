"""The HTTP contract (PROTOCOL.md 1-6, 9, 11) on every door x store x executor."""

from __future__ import annotations

import re
import time
from datetime import datetime

from async_accept.job import JobStatus
from tests import apps
from tests.conftest import ALICE, BOB, Deployment, lapse

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
STATUS_FIELDS = {
    "id",
    "status",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "expires_at",
    "percent_complete",
    "message",
    "estimated_time_remaining",
    "result_status",
    "attempt",
    "links",
}


def accept(dep: Deployment, path: str = "/slow", **kw: object) -> tuple[str, dict]:
    r = dep.post(path, **kw)  # type: ignore[arg-type]
    assert r.status_code == 202, r.text
    return r.headers["location"], r.json()


# --- 1. accepting ------------------------------------------------------------------


def test_accept_answers_202_with_signed_location(dep: Deployment) -> None:
    """A marked route answers 202 with Location, Retry-After, no-store and the job JSON."""
    r = dep.post("/slow", content=b"payload")
    assert r.status_code == 202
    loc = r.headers["location"]
    assert loc.startswith("/_jobs/")
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["status_url"] == loc
    assert body["status"] in ("queued", "processing", "completed")
    assert len(body["id"]) >= 22  # 128 random bits, url-safe base64
    assert RFC3339.match(body["created_at"]) and RFC3339.match(body["expires_at"])
    created = datetime.fromisoformat(body["created_at"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert abs((expires - created).total_seconds() - 86400) < 1


def test_job_ids_are_random_and_unique(dep: Deployment) -> None:
    """Job ids are random, never sequential: 20 accepts give 20 distinct ids."""
    ids = {accept(dep)[1]["id"] for _ in range(20)}
    assert len(ids) == 20


def test_full_cycle_202_status_303_result(dep: Deployment) -> None:
    """202 -> status -> 303 to /result -> the handler's response, byte for byte."""
    loc, _ = accept(dep, content=b'{"x": 1}', headers={**ALICE, "content-type": "application/json"})
    r = dep.finished(loc)
    assert r.status_code == 303
    assert r.headers["location"] == loc + "/result"
    assert r.json()["status"] == "completed"
    assert r.json()["links"]["result"] == loc + "/result"
    res = dep.get(r.headers["location"])
    assert res.status_code == 200
    assert res.headers["x-handler"] == "yes"
    echoed = res.json()
    assert echoed == {
        "method": "POST",
        "path": "/slow",
        "query": "",
        "body": '{"x": 1}',
        "authorization": "Bearer alice",
        "traceparent": None,
        "in_job": True,
    }


def test_handler_runs_once_and_sees_the_whole_request(dep: Deployment) -> None:
    """The replayed request carries method, path, query, headers and body."""
    loc, _ = accept(
        dep,
        "/slow?a=1&b=two",
        content=b"\x00\x01binary",
        headers={**ALICE, "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
    r = dep.finished(loc)
    res = dep.get(r.headers["location"]).json()
    assert res["query"] == "a=1&b=two"
    assert res["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert apps.GATES.runs["slow"] == 1


def test_201_location_is_the_final_resource(dep: Deployment) -> None:
    """A handler answering 201 + Location sends the 303 there."""
    loc, _ = accept(dep, "/create")
    r = dep.finished(loc)
    assert r.status_code == 303
    assert r.headers["location"] == "/things/42"


def test_3xx_location_resolved_against_the_request(dep: Deployment) -> None:
    """A 3xx Location relative to the original request is resolved before the 303."""
    loc, _ = accept(dep, "/redirect")
    r = dep.finished(loc)
    assert r.headers["location"] == "/elsewhere"


def test_4xx_handler_answer_completes_the_job(dep: Deployment) -> None:
    """A 4xx from the handler completes the job; the client meets it at the result."""
    loc, _ = accept(dep, "/client-error")
    r = dep.finished(loc)
    assert r.status_code == 303
    res = dep.get(r.headers["location"])
    assert res.status_code == 422 and res.json() == {"error": "bad input"}


def test_handler_exception_fails_the_job_without_traceback(dep: Deployment) -> None:
    """A raising handler makes the job failed with a problem error, no traceback shown."""
    loc, _ = accept(dep, "/fail")
    r = dep.finished(loc)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "failed"
    err = body["error"]
    assert err["type"].endswith("handler-error")
    assert {"type", "title", "status", "detail"} <= set(err)
    assert "secret detail" not in r.text and "Traceback" not in r.text


def test_5xx_answer_fails_the_job_but_keeps_the_response(dep: Deployment) -> None:
    """A 5xx answer makes the job failed; the response is still kept as the result."""
    loc, _ = accept(dep, "/error500")
    r = dep.finished(loc)
    assert r.json()["status"] == "failed"
    assert r.json()["error"]["status"] == 502
    res = dep.get(loc + "/result")
    assert res.status_code == 502 and res.text == "upstream broke"


def test_streamed_response_replayed_whole(dep: Deployment) -> None:
    """A streamed response is stored and replayed byte for byte."""
    loc, _ = accept(dep, "/stream")
    dep.finished(loc)
    res = dep.get(loc + "/result")
    assert res.status_code == 200
    assert res.content == b"chunk-0;chunk-1;chunk-2;chunk-3;chunk-4;"
    assert "transfer-encoding" not in {k.lower() for k in res.headers if k != "transfer-encoding"}


def test_result_before_finish_is_409(dep: Deployment) -> None:
    """/result before the job ends: 409 problem+json with Retry-After."""
    loc, _ = accept(dep, "/gate/r409")
    r = dep.get(loc + "/result")
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    assert int(r.headers["retry-after"]) >= 1
    apps.GATES.gate("r409").set()
    dep.finished(loc)
    assert dep.get(loc + "/result").text == "released r409"


def test_body_over_limit_is_413_and_no_job(make_dep) -> None:  # type: ignore[no-untyped-def]
    """A body over max_body_size gets 413 problem+json and records no job."""
    for door in ("asgi", "wsgi"):
        d = make_dep(door, "memory", max_body_size=10)
        r = d.post("/slow", content=b"x" * 11)
        assert r.status_code == 413
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 413
        assert d.store.count_by_status()[JobStatus.QUEUED] == 0
        assert sum(d.store.count_by_status().values()) == 0


def test_unmarked_route_passes_through_untouched(dep: Deployment) -> None:
    """An unmarked route's status, headers and body are exactly the app's."""
    r = dep.get("/hello")
    assert r.status_code == 200 and r.text == "hello" and r.headers["x-plain"] == "1"
    assert "vary" not in r.headers
    s = dep.get("/hello-stream")
    assert s.content == b"part0part1part2"


# --- Prefer -------------------------------------------------------------------------


def test_prefer_respond_async_is_acknowledged(dep: Deployment) -> None:
    """Prefer: respond-async on a marked route adds Preference-Applied and Vary: Prefer."""
    r = dep.post("/slow", headers={**ALICE, "Prefer": "RESPOND-ASYNC, foo=bar"})
    assert r.status_code == 202
    assert r.headers["preference-applied"] == "respond-async"
    assert "prefer" in r.headers["vary"].lower()


def test_prefer_respond_async_on_unmarked_route_when_opted_in(make_dep) -> None:  # type: ignore[no-untyped-def]
    """With prefer_async=True any route honours respond-async; others get Vary: Prefer."""
    for door in ("asgi", "wsgi"):
        d = make_dep(door, "memory", prefer_async=True)
        plain = d.get("/hello")
        assert plain.text == "hello" and "prefer" in plain.headers["vary"].lower()
        r = d.client.get("/hello", headers={**ALICE, "Prefer": "respond-async"})
        assert r.status_code == 202
        done = d.finished(r.headers["location"])
        assert d.get(done.headers["location"]).text == "hello"


def test_prefer_respond_async_ignored_without_opt_in(dep: Deployment) -> None:
    """Without prefer_async, Prefer: respond-async on an unmarked route changes nothing."""
    r = dep.client.get("/hello", headers={**ALICE, "Prefer": "respond-async"})
    assert r.status_code == 200 and r.text == "hello"


# --- hybrid wait --------------------------------------------------------------------


def test_hybrid_answers_directly_when_fast(dep: Deployment) -> None:
    """A route with wait answers with the handler's own response when it finishes in time."""
    r = dep.post("/hybrid")
    assert r.status_code == 200
    assert r.text == "fast answer"
    assert r.headers["x-handler"] == "hybrid"
    assert "location" not in r.headers


def test_hybrid_falls_back_to_202_when_slow(dep: Deployment) -> None:
    """A client wait shorter than the job gives the 202, and Preference-Applied: wait=N."""
    r = dep.post("/hybrid?gate=h1", headers={**ALICE, "Prefer": "wait=1"})
    assert r.status_code == 202
    assert r.headers["preference-applied"] == "wait=1"
    apps.GATES.gate("h1").set()
    done = dep.finished(r.headers["location"])
    assert dep.get(done.headers["location"]).text == "fast answer"


def test_prefer_wait_is_capped_by_route_max(dep: Deployment) -> None:
    """Prefer: wait=600 is capped by the route's max_wait (5 s here)."""
    r = dep.post("/hybrid", headers={**ALICE, "Prefer": "wait=600"})
    assert r.status_code == 200
    assert r.headers["preference-applied"] == "wait=5"


def test_prefer_wait_on_plain_route_answers_directly(dep: Deployment) -> None:
    """Prefer: wait=N on a long-running route without wait answers directly when fast."""
    r = dep.post("/slow", headers={**ALICE, "Prefer": "wait=5"}, content=b"q")
    assert r.status_code == 200
    assert r.json()["body"] == "q"
    assert r.headers["preference-applied"] == "wait=5"


# --- 2. status ----------------------------------------------------------------------


def test_status_while_running_is_200_with_retry_after(dep: Deployment) -> None:
    """queued/processing: 200, status JSON with every field, integer Retry-After, no-store."""
    loc, _ = accept(dep, "/gate/st")
    assert apps.GATES.entered_event("st").wait(10)
    r = dep.get(loc)
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    assert re.fullmatch(r"[1-9]\d*", r.headers["retry-after"])
    body = r.json()
    assert set(body) >= STATUS_FIELDS
    assert body["status"] == "processing"
    assert RFC3339.match(body["started_at"])
    assert body["finished_at"] is None
    assert body["links"] == {"self": loc}
    apps.GATES.gate("st").set()
    done = dep.finished(loc)
    assert RFC3339.match(done.json()["finished_at"])


def test_head_status_has_headers_no_body(dep: Deployment) -> None:
    """HEAD on the status URL answers like GET without a body."""
    loc, _ = accept(dep)
    dep.finished(loc)
    r = dep.client.head(loc, headers=ALICE)
    assert r.status_code == 303 and r.content == b""
    assert r.headers["location"] == loc + "/result"


def test_progress_reported_by_handler_is_visible(dep: Deployment) -> None:
    """report_progress() shows as percent_complete, message and estimated_time_remaining."""
    loc, _ = accept(dep, "/progress/p1")
    r = dep.wait_status(loc, lambda r: r.json().get("percent_complete") == 10.0)
    body = r.json()
    assert body["message"] == "started"
    assert 0 <= body["estimated_time_remaining"] <= 8
    assert 1 <= int(r.headers["retry-after"]) <= 8
    apps.GATES.gate("p1").set()
    done = dep.finished(loc)
    assert done.json()["percent_complete"] == 100.0


def test_status_202_style_when_configured(make_dep) -> None:  # type: ignore[no-untyped-def]
    """status_code_running=202: a running job's status answers 202 with Location."""
    d = make_dep("asgi", "memory", status_code_running=202)
    loc, _ = accept(d, "/gate/s202")
    r = d.get(loc)
    assert r.status_code == 202 and r.headers["location"] == loc
    apps.GATES.gate("s202").set()
    assert d.finished(loc).status_code == 303


# --- 4. authorization & tokens --------------------------------------------------------


def _not_found_shape(r) -> bytes:  # type: ignore[no-untyped-def]
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    return bytes(r.content)


def test_uniform_404_for_tampered_unknown_other_caller_anonymous(dep: Deployment) -> None:
    """Tampered, foreign-key, unknown-job, other-caller and anonymous all get one identical 404."""
    loc, body = accept(dep)
    token = loc.rsplit("/", 1)[1]
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    from async_accept.tokens import TokenSigner

    foreign = TokenSigner([b"another-secret"], 3600).sign(body["id"])
    unknown = TokenSigner([b"test-secret-key-0123456789abcdef"], 3600).sign("nosuchjob")
    answers = [
        _not_found_shape(dep.get(f"/_jobs/{flipped}")),
        _not_found_shape(dep.get("/_jobs/garbage")),
        _not_found_shape(dep.get(f"/_jobs/{foreign}")),
        _not_found_shape(dep.get(f"/_jobs/{unknown}")),
        _not_found_shape(dep.get(loc, headers=BOB)),
        _not_found_shape(dep.client.get(loc)),
        _not_found_shape(dep.get(loc + "/result", headers=BOB)),
        _not_found_shape(dep.client.delete(loc, headers=BOB)),
    ]
    assert len(set(answers)) == 1


def test_owner_matches_session_cookie(dep: Deployment) -> None:
    """A job created with a session cookie is visible only with that cookie."""
    r = dep.client.post("/slow", headers={"Cookie": "session=abc; other=1"})
    loc = r.headers["location"]
    assert dep.client.get(loc, headers={"Cookie": "session=abc"}).status_code in (200, 303)
    assert dep.client.get(loc, headers={"Cookie": "session=xyz"}).status_code == 404
    assert dep.client.get(loc, headers={"Cookie": "other=1"}).status_code == 404


def test_owner_is_stored_only_as_hmac(dep: Deployment) -> None:
    """The job's owner field holds a keyed hash, never the credentials."""
    _, body = accept(dep)
    job = dep.store.get(body["id"], time.time())
    assert "alice" not in job.owner and len(job.owner) == 64


def test_expired_token_is_410(dep: Deployment) -> None:
    """A validly signed token past its TTL gets 410 Gone."""
    loc, _ = accept(dep)
    dep.finished(loc)
    dep.clock.advance(86400 + 5)
    r = dep.get(loc)
    assert r.status_code == 410
    assert r.headers["content-type"] == "application/problem+json"


def test_rotated_secret_still_verifies(make_dep) -> None:  # type: ignore[no-untyped-def]
    """Tokens signed with an old key still verify after rotation (newest first)."""
    d = make_dep("wsgi", "sqlite", secret_key="old-key-aaaaaaaaaaaaaaaaaaaaaaaa")
    loc, _ = accept(d)
    d.finished(loc)
    d.middleware.runtime.engine.signer.__init__(
        [b"new-key-bbbbbbbbbbbbbbbbb", b"old-key-aaaaaaaaaaaaaaaaaaaaaaaa"], 86400, d.clock
    )
    assert d.get(loc).status_code == 303
    loc2, _ = accept(d)
    assert d.finished(loc2).status_code == 303


# --- 5. cancel -----------------------------------------------------------------------


def test_cancel_queued_job_never_runs(make_dep) -> None:  # type: ignore[no-untyped-def]
    """DELETE on a queued job: 200, canceled, and the handler never runs."""
    for door in ("asgi", "wsgi"):
        d = make_dep(door, "memory", executor="thread?max_workers=1")
        # Occupy the single worker so the next job stays queued.
        blocker, _ = accept(d, f"/gate/block-{door}")
        assert apps.GATES.entered_event(f"block-{door}").wait(10)
        loc, _ = accept(d, f"/gate/never-{door}")
        assert d.get(loc).json()["status"] == "queued"
        r = d.client.delete(loc, headers=ALICE)
        assert r.status_code == 200
        assert r.json()["status"] == "canceled"
        apps.GATES.gate(f"block-{door}").set()
        assert d.finished(blocker).status_code == 303
        probe, _ = accept(d, "/slow")  # runs after anything queued before it
        d.finished(probe)
        assert apps.GATES.runs.get(f"never-{door}", 0) == 0
        assert d.get(loc).json()["status"] == "canceled"


def test_cancel_running_job_stops_at_report_progress(dep: Deployment) -> None:
    """DELETE on a running job: 202 with cancel_requested, then the job ends canceled."""
    loc, _ = accept(dep, "/progress/c1")
    assert apps.GATES.entered_event("c1").wait(10)
    dep.wait_status(loc, lambda r: r.json()["status"] == "processing")
    r = dep.client.delete(loc, headers=ALICE)
    assert r.status_code == 202
    assert r.json()["cancel_requested"] is True
    done = dep.finished(loc)
    assert done.json()["status"] == "canceled"
    assert done.status_code == 200


def test_post_cancel_alias(dep: Deployment) -> None:
    """POST {status}/cancel works like DELETE."""
    loc, _ = accept(dep, "/progress/c2")
    assert apps.GATES.entered_event("c2").wait(10)
    dep.wait_status(loc, lambda r: r.json()["status"] == "processing")
    r = dep.client.post(loc + "/cancel", headers=ALICE)
    assert r.status_code == 202
    assert dep.finished(loc).json()["status"] == "canceled"


def test_cancel_terminal_job_is_409_and_delete_deletes_it(dep: Deployment) -> None:
    """POST .../cancel of a finished job: 409 problem+json, the result stays; DELETE
    of it deletes it (record and result): 204, then 404 (RFC 9110 section 9.3.5)."""
    loc, _ = accept(dep)
    dep.finished(loc)
    r = dep.client.post(loc + "/cancel", headers=ALICE)
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    assert dep.get(loc).status_code == 303
    assert dep.client.delete(loc, headers=BOB).status_code == 404  # owner only
    r = dep.client.delete(loc, headers=ALICE)
    assert (r.status_code, r.content) == (204, b"")
    assert dep.get(loc).status_code == 404
    assert dep.get(loc + "/result").status_code == 404


def test_finish_before_noticing_cancel_keeps_completed(dep: Deployment) -> None:
    """Thread handlers that finish before noticing a cancel keep completed; asyncio ones stop."""
    loc, _ = accept(dep, "/gate/fin")
    assert apps.GATES.entered_event("fin").wait(10)
    dep.wait_status(loc, lambda r: r.json()["status"] == "processing")
    if dep.executor_name == "asyncio":
        # An asyncio handler is cancelled at its next await: it never gets to finish.
        assert dep.client.delete(loc, headers=ALICE).status_code == 202
        assert dep.finished(loc).json()["status"] == "canceled"
        return
    assert dep.client.delete(loc, headers=ALICE).status_code == 202
    apps.GATES.gate("fin").set()
    done = dep.finished(loc)
    assert done.status_code == 303 and done.json()["status"] == "completed"


# --- 6. deadman switch -----------------------------------------------------------------


def test_deadline_exceeded_on_status_read(dep: Deployment) -> None:
    """A job still running at 2 x sla is failed with deadline-exceeded by the status read."""
    loc, _ = accept(dep, "/gate/dl")
    assert apps.GATES.entered_event("dl").wait(10)
    dep.clock.advance(61)  # sla=30 on /gate
    r = dep.get(loc)
    assert r.json()["status"] == "failed"
    assert r.json()["error"]["type"].endswith("deadline-exceeded")
    apps.GATES.gate("dl").set()
    time.sleep(0.1)
    assert dep.get(loc).json()["status"] == "failed"  # the late finish did not overwrite it


def test_worker_lost_when_heartbeat_lapses(dep: Deployment) -> None:
    """A processing job whose worker stopped heartbeating is failed with worker-lost."""
    now = time.time()
    _, body = accept(dep, "/gate/never-runs-here", headers={**ALICE, "Prefer": "respond-async"})
    job_id = body["id"]
    apps.GATES.gate("never-runs-here").set()
    dep.finished(dep.post("/slow").headers["location"])
    # Simulate a job claimed by a worker in another (now dead) process.
    from async_accept.job import CapturedRequest, Job

    ghost = Job(
        id="ghost-" + job_id[:10],
        status=JobStatus.QUEUED,
        owner=dep.store.get(job_id, now).owner,
        created_at=now,
        updated_at=now,
        expires_at=now + 3600,
        deadline_at=now + 600,
        sla=300,
    )
    dep.store.create(ghost, CapturedRequest("POST", "/slow"))
    dep.store.claim(ghost.id, "dead-worker", now)
    token = dep.middleware.runtime.engine.token_for(ghost)
    r = dep.get(f"/_jobs/{token}")
    assert r.json()["status"] == "processing"
    # worker_lost_after=3 s of this process's monotonic time with its own beats
    # landing, the lease unchanged all along (the wall clock plays no part)
    lapse(dep.middleware.runtime.engine.liveness, 4)
    r = dep.get(f"/_jobs/{token}")
    assert r.json()["status"] == "failed"
    assert r.json()["error"]["type"].endswith("worker-lost")


# --- 9. errors ------------------------------------------------------------------------


def test_unknown_paths_under_prefix_are_problem_404(dep: Deployment) -> None:
    """Anything else under the prefix is a problem+json 404; wrong methods 405."""
    assert dep.get("/_jobs").status_code == 404
    assert dep.get("/_jobs/a/b/c").status_code == 404
    loc, _ = accept(dep)
    r = dep.client.put(loc, headers=ALICE)
    assert r.status_code == 405
    assert r.headers["content-type"] == "application/problem+json"
    assert "GET" in r.headers["allow"]


def test_store_failure_on_accept_is_503_not_202(dep: Deployment, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """When the store can't take the job: 503 + Retry-After + problem+json, no job."""
    from async_accept.errors import StoreError

    def broken(*a: object, **k: object) -> None:
        raise StoreError("disk full")

    async def abroken(*a: object, **k: object) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(dep.store, "create", broken)
    native = getattr(dep.store, "aio", None)
    if native is not None:
        monkeypatch.setattr(native, "create", abroken)
    r = dep.post("/slow")
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["content-type"] == "application/problem+json"
    monkeypatch.undo()
    assert sum(dep.store.count_by_status().values()) == 0


# --- 11. inside the handler ----------------------------------------------------------


def test_report_progress_and_current_job_are_noops_outside_jobs() -> None:
    """Outside a job report_progress does nothing, whatever its arguments, and
    current_job() is None."""
    from async_accept import current_job, report_progress

    report_progress(50, message="x", eta=1)
    assert current_job() is None
    assert report_progress(101) is None


def test_unmarked_route_sees_no_job(dep: Deployment) -> None:
    """A replayed request sees current_job(); the route's unmarked twin does not run in one."""
    loc, _ = accept(dep)
    res = dep.get(dep.finished(loc).headers["location"]).json()
    assert res["in_job"] is True
