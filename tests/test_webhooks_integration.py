"""Completion webhooks wired into the middleware (PROTOCOL.md 8), on real deployments.

Deliveries go to a real receiver on 127.0.0.1 that verifies every signature
with :func:`async_accept.webhooks.verify`. The network guard of
tests/test_webhooks.py runs here too (autouse): any connect or name lookup
outside 127.0.0.0/8 fails the test, so a policy bug can't reach another host.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from async_accept.errors import ConfigurationError
from async_accept.outbox import (
    Delivery,
    DeliveryState,
    MemoryOutbox,
    Outbox,
    RedisOutbox,
    SQLiteOutbox,
)
from async_accept.webhooks import WebhookPolicy
from tests import apps
from tests import test_webhooks as _webhook_tests
from tests.conftest import ALICE, COMBOS, Deployment, deploy
from tests.test_webhooks import (  # noqa: F401  (the outbox contract, rerun on Redis below)
    NOW,
    SECRET,
    Receiver,
    table_resolver,
    test_outbox_claims_a_due_delivery_once_until_its_lease_ends,
    test_outbox_enqueue_is_idempotent_on_the_id,
    test_outbox_purges_old_sent_deliveries,
    test_outbox_records_disabled_endpoints,
    test_outbox_retry_dead_and_replay,
)

FAST = {"interval": 0.05}

# The fixtures of tests/test_webhooks.py: the receiver, and the autouse network guard.
network_guard = _webhook_tests.network_guard
receiver = _webhook_tests.receiver


def hook_options(rec: Receiver, **extra: Any) -> dict[str, Any]:
    """Webhooks to the receiver on 127.0.0.1 (loopback, so allow_private)."""
    rec.now = None  # real time: the dispatcher signs with the wall clock
    opts: dict[str, Any] = {
        "webhook_secret": SECRET,
        "webhook_url": rec.url("/hook"),
        "webhook_allow_private": True,
        "webhook_dispatcher_options": FAST,
    }
    opts.update(extra)
    return opts


def sent_status(req: Any) -> dict[str, Any]:
    """The status JSON a delivery carried in its Standard Webhooks envelope."""
    envelope = json.loads(req.body)
    data: dict[str, Any] = envelope["data"]
    assert envelope["type"] == "job." + data["status"]
    return data


def path_of(url: str) -> str:
    """The path of an absolute link (webhook bodies carry absolute URLs)."""
    parts = urlsplit(url)
    assert parts.scheme and parts.netloc, url
    return parts.path


def wait_requests(rec: Receiver, n: int, timeout: float = 15.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        with rec.lock:
            got = list(rec.requests)
        if len(got) >= n:
            return got
        assert time.monotonic() < deadline, f"only {len(got)} of {n} webhooks arrived"
        time.sleep(0.01)


def wait_delivery(
    outbox: Outbox, until: Callable[[Delivery], bool], timeout: float = 15.0
) -> Delivery:
    deadline = time.monotonic() + timeout
    while True:
        found = [d for d in outbox.list_deliveries() if until(d)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no delivery matched: {outbox.list_deliveries()}"
        time.sleep(0.02)


def dispatcher_of(dep: Deployment) -> Any:
    d = dep.middleware.runtime.observer.dispatcher
    assert d is not None
    return d


@pytest.fixture(params=COMBOS, ids=["-".join(c) for c in COMBOS])
def hooked(
    request: pytest.FixtureRequest, receiver: Receiver, tmp_path: Path
) -> Iterator[Deployment]:
    """Every door x store x executor, with webhooks to the receiver."""
    apps.GATES = apps.Gates()
    door, store, executor = request.param
    with deploy(door, store, executor, tmp_path, **hook_options(receiver)) as d:
        yield d


# -- delivery on completion --------------------------------------------------------------


def test_completed_job_is_notified_with_its_signed_status_json(
    hooked: Deployment, receiver: Receiver
) -> None:
    """A finished job POSTs its status JSON (links included), signed, to the webhook URL."""
    r = hooked.post("/slow", content=b"payload")
    loc = r.headers["location"]
    status = hooked.finished(loc)
    (req,) = wait_requests(receiver, 1)
    assert req.verified == "ok"
    assert req.path == "/hook"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["webhook-id"].startswith("msg_")
    envelope = json.loads(req.body)
    assert set(envelope) == {"type", "timestamp", "data"}  # the Standard Webhooks envelope
    assert envelope["type"] == "job.completed"
    assert envelope["timestamp"].endswith("Z")
    body = envelope["data"]
    # Exactly what the status URL says, with absolute links.
    assert body["links"] == {
        "self": "http://testserver" + loc,
        "result": "http://testserver" + loc + "/result",
    }
    assert {**body, "links": {}} == {**status.json(), "links": {}}
    assert body["id"] == r.json()["id"] and body["status"] == "completed"
    time.sleep(0.2)
    assert len(receiver.requests) == 1  # once, not per poll or per process
    sent = dispatcher_of(hooked).outbox.get(req.headers["webhook-id"])
    assert sent is not None and sent.state is DeliveryState.SENT and sent.job_id == body["id"]


def test_failed_canceled_and_deadman_jobs_are_notified(
    hooked: Deployment, receiver: Receiver
) -> None:
    """Every way to an end notifies: a failing handler, a cancel, the deadman switch."""
    failed = hooked.post("/fail").headers["location"]
    hooked.finished(failed)
    canceled = hooked.post("/progress/hook-cancel").headers["location"]
    assert apps.GATES.entered_event("hook-cancel").wait(10)
    assert hooked.client.delete(canceled, headers=ALICE).status_code == 202
    hooked.finished(canceled)
    zombie = hooked.post("/gate/hook-zombie").headers["location"]
    assert apps.GATES.entered_event("hook-zombie").wait(10)
    hooked.clock.advance(61)  # 2 x sla of /gate: the status read applies the deadman switch
    assert hooked.get(zombie).json()["status"] == "failed"
    apps.GATES.open_all()
    requests = wait_requests(receiver, 3)
    time.sleep(0.3)  # the zombie's own finish later must not notify a second time
    by_url = {}
    for req in receiver.requests:
        assert req.verified == "ok"
        body = sent_status(req)
        by_url.setdefault(path_of(body["links"]["self"]), []).append(body)
    assert set(by_url) == {failed, canceled, zombie}
    assert all(len(v) == 1 for v in by_url.values()), by_url
    assert by_url[failed][0]["status"] == "failed"
    assert by_url[failed][0]["error"]["type"].endswith("handler-error")
    assert by_url[canceled][0]["status"] == "canceled"
    assert by_url[zombie][0]["error"]["type"].endswith("deadline-exceeded")
    assert len(requests) >= 3


def test_route_webhook_takes_precedence_over_the_default(make_dep: Any, receiver: Receiver) -> None:
    """A route's own webhook= is notified instead of the global webhook_url."""
    for door in ("asgi", "wsgi"):
        with receiver.lock:
            receiver.requests.clear()
        routes: dict[str, Any] = {"POST /hello": {"webhook": receiver.url("/route-hook")}}
        if door == "wsgi":
            routes = {**apps.WSGI_ROUTES, **routes}
        d = make_dep(door, "memory", **hook_options(receiver, routes=routes))
        loc = d.post("/hello").headers["location"]
        d.finished(loc)
        other = d.post("/slow").headers["location"]
        d.finished(other)
        reqs = wait_requests(receiver, 2)
        paths = {path_of(sent_status(r)["links"]["self"]): r.path for r in reqs}
        assert paths == {loc: "/route-hook", other: "/hook"}


def test_no_webhook_configured_sends_nothing(make_dep: Any, receiver: Receiver) -> None:
    """With a secret but no URL anywhere, jobs end without deliveries."""
    d = make_dep("wsgi", "memory", **hook_options(receiver, webhook_url=None))
    d.finished(d.post("/slow").headers["location"])
    time.sleep(0.2)
    assert receiver.requests == []
    assert dispatcher_of(d).outbox.list_deliveries() == []


def test_no_notification_for_a_job_refused_by_the_executor(
    make_dep: Any, receiver: Receiver
) -> None:
    """A 503 because the executor refused the job promised nothing: nobody is notified."""
    from async_accept.errors import ExecutorError

    d = make_dep("wsgi", "memory", **hook_options(receiver))
    executor = d.middleware.runtime.executor
    real = executor.submit

    def refuse(job_id: str) -> None:
        raise ExecutorError("queue full")

    executor.submit = refuse
    assert d.post("/slow").status_code == 503
    executor.submit = real
    d.finished(d.post("/slow").headers["location"])
    (req,) = wait_requests(receiver, 1)
    time.sleep(0.2)
    assert len(receiver.requests) == 1
    assert sent_status(req)["status"] == "completed"


# -- client-supplied callbacks ----------------------------------------------------------------


def test_client_callback_on_the_allow_list_is_notified_too(
    make_dep: Any, receiver: Receiver
) -> None:
    """A Callback-URL the allow-list matches gets the notification, as does the app's webhook."""
    allow = [f"http://127.0.0.1:{receiver.port}/callbacks/"]
    for door in ("asgi", "wsgi"):
        with receiver.lock:
            receiver.requests.clear()
        d = make_dep(door, "sqlite", **hook_options(receiver, webhook_allow=allow))
        r = d.post(
            "/slow",
            headers={**ALICE, "Callback-URL": receiver.url("/callbacks/order-7")},
        )
        assert r.status_code == 202, r.text
        d.finished(r.headers["location"])
        reqs = wait_requests(receiver, 2)
        assert sorted(q.path for q in reqs) == ["/callbacks/order-7", "/hook"]
        assert all(q.verified == "ok" for q in reqs)
        assert reqs[0].headers["webhook-id"] != reqs[1].headers["webhook-id"]
        job_id = r.json()["id"]
        client = [
            x
            for x in dispatcher_of(d).outbox.list_deliveries()
            if x.client_supplied and x.job_id == job_id
        ]
        assert [x.url for x in client] == [receiver.url("/callbacks/order-7")]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/elsewhere",  # not below the allowed prefix
        "http://127.0.0.1:{port}/callbacks/../admin",  # climbs out of it
        "https://127.0.0.1:{port}/callbacks/x",  # another scheme
        "ftp://127.0.0.1/callbacks/x",
        "http://user:pw@127.0.0.1:{port}/callbacks/x",
        "not a url",
    ],
)
def test_client_callback_off_the_allow_list_is_400(
    make_dep: Any, receiver: Receiver, url: str
) -> None:
    """A Callback-URL the allow-list doesn't match is 400 problem+json, and no job is made."""
    allow = [f"http://127.0.0.1:{receiver.port}/callbacks/"]
    d = make_dep("asgi", "memory", **hook_options(receiver, webhook_allow=allow))
    r = d.post("/slow", headers={**ALICE, "Callback-URL": url.format(port=receiver.port)})
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith("callback-refused")
    assert sum(d.store.count_by_status().values()) == 0


def test_client_callbacks_are_refused_without_an_allow_list(
    make_dep: Any, receiver: Receiver
) -> None:
    """With no allow-list every Callback-URL is refused; callback_header=None ignores it."""
    d = make_dep("wsgi", "memory", **hook_options(receiver))
    r = d.post("/slow", headers={**ALICE, "Callback-URL": receiver.url("/x")})
    assert r.status_code == 400
    quiet = make_dep("wsgi", "memory", **hook_options(receiver, callback_header=None))
    assert quiet.post("/slow", headers={**ALICE, "Callback-URL": "http://x"}).status_code == 202
    custom = make_dep(
        "wsgi",
        "memory",
        **hook_options(receiver, callback_header="X-Notify", webhook_url=None),
    )
    assert custom.post("/slow", headers={**ALICE, "X-Notify": "http://x.test/"}).status_code == 400


def test_callback_to_a_private_ip_literal_is_refused_at_accept(
    make_dep: Any, receiver: Receiver, network_guard: list[str]
) -> None:
    """An allow-listed host that is a private or metadata IP literal is refused at once."""
    policy = WebhookPolicy(["10.0.0.7", "169.254.169.254", "[::ffff:10.0.0.7]"])
    d = make_dep(
        "asgi",
        "memory",
        webhook_secret=SECRET,
        webhook_policy=policy,
        webhook_dispatcher_options=FAST,
    )
    for url in (
        "http://10.0.0.7/cb",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:10.0.0.7]/cb",
    ):
        r = d.post("/slow", headers={**ALICE, "Callback-URL": url})
        assert r.status_code == 400, url
        assert "private" in r.json()["detail"] or "link-local" in r.json()["detail"]
    assert network_guard == []


def test_callback_name_resolving_to_a_private_address_is_never_connected(
    make_dep: Any, network_guard: list[str]
) -> None:
    """SSRF: an allowed name resolving to an internal address is a dead letter, never connected."""
    resolver = table_resolver(
        {"hooks.test": ["10.0.0.7"], "mixed.test": ["93.184.216.34", "169.254.169.254"]}
    )
    policy = WebhookPolicy(["hooks.test", "mixed.test"], resolver=resolver)
    for door in ("asgi", "wsgi"):
        d = make_dep(
            door,
            "memory",
            webhook_secret=SECRET,
            webhook_policy=policy,
            webhook_dispatcher_options=FAST,
        )
        locs = []
        for url in ("http://hooks.test/cb", "http://mixed.test:8080/cb"):
            r = d.post("/slow", headers={**ALICE, "Callback-URL": url})
            assert r.status_code == 202, r.text  # a name: checked before each attempt
            locs.append(r.headers["location"])
        for loc in locs:
            d.finished(loc)
        outbox = dispatcher_of(d).outbox
        for host, address in (("hooks.test", "10.0.0.7"), ("mixed.test", "169.254.169.254")):
            dead = wait_delivery(
                outbox, lambda x, h=host: h in x.url and x.state is DeliveryState.DEAD
            )
            assert dead.attempts == 0 and dead.client_supplied
            assert dead.last_error is not None and dead.last_error.startswith("refused:")
            assert address in dead.last_error
    assert network_guard == []


# -- durability and lifecycle ----------------------------------------------------------------


def test_deliveries_survive_a_restart(make_dep: Any, receiver: Receiver, tmp_path: Path) -> None:
    """A delivery pending at a restart is sent by the next process from the SQLite store's file."""
    receiver.answer((503, {"Retry-After": "2"}))
    first = make_dep("wsgi", "sqlite", **hook_options(receiver))
    loc = first.post("/slow").headers["location"]
    first.finished(loc)
    (refused,) = wait_requests(receiver, 1)
    outbox = dispatcher_of(first).outbox
    assert isinstance(outbox, SQLiteOutbox)
    assert outbox.path == str(tmp_path / "jobs.db")
    wait_delivery(outbox, lambda x: x.attempts == 1 and x.state is DeliveryState.PENDING)
    first.middleware.runtime.shutdown()  # the process goes away before the retry is due

    second = make_dep("asgi", "sqlite", executor="thread", **hook_options(receiver))
    second.get("/hello")
    got = wait_requests(receiver, 2, timeout=20)
    assert got[1].verified == "ok"
    assert got[1].headers["webhook-id"] == refused.headers["webhook-id"]
    assert path_of(sent_status(got[1])["links"]["self"]) == loc


def test_redis_store_keeps_deliveries_in_redis(receiver: Receiver) -> None:
    """On the Redis store the outbox is a RedisOutbox beside the jobs; it survives a restart."""
    import httpx

    from async_accept.stores.redis import RedisStore
    from tests.conftest import SECRET as APP_SECRET
    from tests.services import require_redis, wipe_redis_namespace

    url = require_redis()
    ns = f"hooks-{time.time_ns()}"
    receiver.answer((503, {"Retry-After": "2"}))

    def process() -> Any:
        store = RedisStore.from_url(url, namespace=ns)
        return apps.build_wsgi(secret_key=APP_SECRET, store=store, **hook_options(receiver))

    first = process()
    try:
        outbox = first.runtime.observer.dispatcher.outbox
        assert isinstance(outbox, RedisOutbox)
        with httpx.Client(transport=httpx.WSGITransport(app=first), base_url="http://t") as c:
            loc = c.post("/slow", headers=ALICE).headers["location"]
            deadline = time.monotonic() + 15
            while c.get(loc, headers=ALICE).status_code != 303:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        (refused,) = wait_requests(receiver, 1)
        wait_delivery(outbox, lambda x: x.attempts == 1 and x.state is DeliveryState.PENDING)
    finally:
        first.runtime.shutdown()
        first.store.close()
    second = process()
    try:
        second.runtime.start()
        got = wait_requests(receiver, 2, timeout=20)
    finally:
        second.runtime.shutdown()
        second.store.close()
        wipe_redis_namespace(url, ns)
    assert got[1].headers["webhook-id"] == refused.headers["webhook-id"]
    assert got[1].verified == "ok"
    assert path_of(sent_status(got[1])["links"]["self"]) == loc


def test_dispatcher_runs_with_the_runtime_and_stops_at_shutdown(
    make_dep: Any, receiver: Receiver
) -> None:
    """The web process's dispatcher thread starts with the runtime and ends at shutdown."""
    d = make_dep("wsgi", "memory", **hook_options(receiver))
    d.get("/_jobs/nothing")  # starts the runtime
    dispatcher = dispatcher_of(d)
    assert dispatcher._thread is not None and dispatcher._thread.is_alive()
    thread = dispatcher._thread
    d.middleware.runtime.shutdown()
    assert dispatcher._thread is None and not thread.is_alive()


def test_derived_outboxes(make_dep: Any, receiver: Receiver, tmp_path: Path) -> None:
    """The outbox follows the store (memory, SQLite file) unless webhook_outbox names one."""
    mem = make_dep("wsgi", "memory", **hook_options(receiver))
    assert isinstance(dispatcher_of(mem).outbox, MemoryOutbox)
    lite = make_dep("asgi", "sqlite", **hook_options(receiver))
    box = dispatcher_of(lite).outbox
    assert isinstance(box, SQLiteOutbox) and box.path == lite.store.path
    own = make_dep(
        "wsgi",
        "memory",
        **hook_options(receiver, webhook_outbox=f"sqlite:///{tmp_path / 'hooks.db'}"),
    )
    assert dispatcher_of(own).outbox.path == str(tmp_path / "hooks.db")  # type: ignore[attr-defined]


# -- configuration -------------------------------------------------------------------------------


def build(**options: Any) -> Any:
    from async_accept.wsgi import AsyncAcceptMiddleware

    options.setdefault("secret_key", "k" * 32)
    options.setdefault("store", "memory://")
    return AsyncAcceptMiddleware(apps.plain_wsgi_app, **options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"routes": {"POST /x": {"webhook": "https://h.example/"}}}, "webhook_secret"),
        ({"webhook_url": "https://h.example/"}, "webhook_secret"),
        ({"webhook_allow": ["h.example"]}, "webhook_secret"),
        ({"webhook_secret": "whsec_!!"}, "whsec_"),
        ({"webhook_secret": SECRET, "webhook_url": "ftp://h.example/"}, "http"),
        ({"webhook_secret": SECRET, "webhook_url": "https://u:p@h.example/"}, "userinfo"),
        (
            {"webhook_secret": SECRET, "routes": {"POST /x": {"webhook": "gopher://h/"}}},
            "POST /x",
        ),
        ({"webhook_secret": SECRET, "webhook_allow": ["a/b"]}, "allow-list"),
        ({"webhook_secret": SECRET, "callback_header": "Bad Header"}, "callback_header"),
        ({"webhook_secret": SECRET, "webhook_outbox": object()}, "webhook_outbox"),
        ({"webhook_secret": SECRET, "webhook_outbox": "redis://x"}, "outbox"),
        ({"webhook_secret": SECRET, "webhook_dispatcher_options": {"speed": 1}}, "speed"),
        ({"webhook_secret": SECRET, "webhook_dispatcher_options": {"timeout": -1}}, "timeout"),
        (
            {"webhook_secret": SECRET, "webhook_policy": WebhookPolicy(), "webhook_allow": ["a"]},
            "not both",
        ),
        ({"webhook_secret": SECRET, "webhook_policy": "strict"}, "WebhookPolicy"),
    ],
)
def test_bad_webhook_options_fail_at_construction(options: dict[str, Any], message: str) -> None:
    """Each bad webhook option is a ConfigurationError at construction, naming the fix."""
    with pytest.raises(ConfigurationError, match=message):
        build(**options)


def test_decorated_route_webhook_without_secret_fails_at_discovery() -> None:
    """A @long_running(webhook=...) endpoint without webhook_secret fails when discovered."""
    from async_accept.routes import RouteOptions, parse_route

    mw = build()
    with pytest.raises(ConfigurationError, match="webhook_secret"):
        mw._door.add_routes([parse_route("POST /d", RouteOptions(webhook="https://h.example/"))])


def test_shared_custom_store_needs_an_explicit_outbox() -> None:
    """A shared store of unknown kind must name its outbox: memory would lose deliveries."""
    from async_accept.stores.memory import MemoryStore

    class SharedStore(MemoryStore):
        shared = True

    with pytest.raises(ConfigurationError, match="webhook_outbox"):
        build(store=SharedStore(), webhook_secret=SECRET)
    ok = build(store=SharedStore(), webhook_secret=SECRET, webhook_outbox="memory://")
    assert isinstance(ok.runtime.observer.dispatcher.outbox, MemoryOutbox)


def test_delivery_ids_are_stable_per_job_and_target() -> None:
    """The webhook-id of a job's notification to a URL is the same every time it is recorded."""
    from async_accept._observer import delivery_id

    a = delivery_id("job-1", "https://h.example/a")
    assert a == delivery_id("job-1", "https://h.example/a")
    assert a != delivery_id("job-1", "https://h.example/b")
    assert a != delivery_id("job-2", "https://h.example/a")
    # SHA-1 hex of "job\0url", as the Redis scripts compute it (redis.sha1hex)
    assert a == "msg_" + hashlib.sha1(b"job-1\x00https://h.example/a").hexdigest()


# -- the Redis outbox passes the outbox contract --------------------------------------------------


@pytest.fixture
def outbox() -> Iterator[Outbox]:
    """A RedisOutbox in a fresh namespace (the contract tests imported above run on it)."""
    from tests.services import require_redis, wipe_redis_namespace

    url = require_redis()
    namespace = f"outbox-{time.time_ns()}"
    box = RedisOutbox.from_url(url, namespace=namespace)
    try:
        yield box
    finally:
        box.close()
        wipe_redis_namespace(url, namespace)


def test_redis_outbox_claims_are_exclusive_across_clients() -> None:
    """Four claimers with their own connections never get the same delivery."""
    import threading

    from tests.services import require_redis, wipe_redis_namespace

    url = require_redis()
    ns = f"outbox-race-{time.time_ns()}"
    seed = RedisOutbox.from_url(url, namespace=ns)
    for i in range(200):
        seed.enqueue(
            Delivery(id=f"msg_{i}", url="http://h.test/", payload="{}", created_at=NOW, next_at=NOW)
        )
    boxes = [RedisOutbox.from_url(url, namespace=ns) for _ in range(4)]
    got: list[list[str]] = [[] for _ in boxes]
    start = threading.Barrier(len(boxes))

    def claim(n: int) -> None:
        start.wait()
        while batch := boxes[n].due(NOW + 1, limit=3):
            got[n].extend(x.id for x in batch)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(len(boxes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    claimed = [i for ids in got for i in ids]
    assert len(claimed) == len(set(claimed)) == 200
    for box in [seed, *boxes]:
        box.close()
    wipe_redis_namespace(url, ns)


def test_redis_outbox_keeps_json_text_and_fields() -> None:
    """A delivery round-trips through Redis: payload text, floats and flags exactly."""
    from tests.services import require_redis, wipe_redis_namespace

    url = require_redis()
    namespace = f"outbox-rt-{time.time_ns()}"
    box = RedisOutbox.from_url(url, namespace=namespace)
    try:
        d = Delivery(
            id="msg_rt",
            url="https://h.example/x?y=1",
            payload='{"n": 3, "é": "ü"}',
            created_at=NOW + 0.123456789,
            next_at=NOW + 0.5,
            updated_at=NOW + 0.25,
            job_id="job-9",
            client_supplied=True,
        )
        assert box.enqueue(d) == d
        assert box.get("msg_rt") == d
        assert box.get("msg_none") is None
    finally:
        box.close()
        wipe_redis_namespace(url, namespace)


# -- real server processes ---------------------------------------------------------------------


@pytest.fixture
def servers() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for s in started:
        s.kill()


def _server(door: str, tmp_path: Path, rec: Receiver, log: str, port: int | None = None) -> Any:
    from tests.servers import base_env, gunicorn, uvicorn

    rec.now = None
    env = base_env(
        ASYNC_ACCEPT_STORE=f"sqlite:///{tmp_path / 'jobs.db'}",
        ASYNC_ACCEPT_WEBHOOK_SECRET=SECRET,
        ASYNC_ACCEPT_WEBHOOK_URL=rec.url("/hook"),
    )
    if door == "uvicorn":
        return uvicorn("tests.e2e_webhook_app:asgi_app", env, tmp_path / log, 2, port)
    return gunicorn("tests.e2e_webhook_app:wsgi_app", env, tmp_path / log, 2, port)


def _wait_pending_retry(db: Path, timeout: float = 15.0) -> None:
    """Until the outbox holds one delivery back in ``pending`` after a refused attempt."""
    import sqlite3

    deadline = time.monotonic() + timeout
    while True:
        conn = sqlite3.connect(db, timeout=5)
        try:
            rows = conn.execute("SELECT state, attempts FROM webhook_deliveries").fetchall()
        finally:
            conn.close()
        if rows and all(state == "pending" and attempts >= 1 for state, attempts in rows):
            return
        assert time.monotonic() < deadline, f"deliveries still {rows}"
        time.sleep(0.02)


def _poll_done(base: str, loc: str) -> Any:
    import httpx

    deadline = time.monotonic() + 30
    while (r := httpx.get(base + loc, headers=ALICE, timeout=5)).status_code != 303:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.05)
    return r


@pytest.mark.slow
@pytest.mark.parametrize("door", ["uvicorn", "gunicorn"])
def test_two_server_processes_notify_each_job_once(
    door: str, tmp_path: Path, receiver: Receiver, servers: list[Any]
) -> None:
    """Two web processes, each with its dispatcher, on one SQLite outbox: one delivery per job."""
    import httpx

    server = _server(door, tmp_path, receiver, "server.log")
    servers.append(server.start())
    locs = []
    for i in range(10):
        r = httpx.post(server.base + "/slow", content=f"n{i}".encode(), headers=ALICE, timeout=5)
        assert r.status_code == 202, r.text
        locs.append(r.headers["location"])
    for loc in locs:
        _poll_done(server.base, loc)
    got = wait_requests(receiver, 10, timeout=30)
    time.sleep(0.5)
    assert len(receiver.requests) == 10
    assert all(q.verified == "ok" for q in got)
    assert sorted(path_of(sent_status(q)["links"]["self"]) for q in got) == sorted(locs)
    assert len({q.headers["webhook-id"] for q in got}) == 10


@pytest.mark.slow
@pytest.mark.parametrize("door", ["uvicorn", "gunicorn"])
def test_pending_delivery_survives_kill_9(
    door: str, tmp_path: Path, receiver: Receiver, servers: list[Any]
) -> None:
    """kill -9 with a delivery waiting for its retry: the restarted server sends it."""
    import httpx

    receiver.answer((503, {"Retry-After": "3"}))
    first = _server(door, tmp_path, receiver, "first.log")
    servers.append(first.start())
    loc = httpx.post(first.base + "/slow", headers=ALICE, timeout=5).headers["location"]
    _poll_done(first.base, loc)
    (refused,) = wait_requests(receiver, 1)
    # Kill only once the 503 is recorded (the delivery waits for its retry): killed
    # mid-send, it would stay leased to the dead server for DEFAULT_LEASE seconds.
    _wait_pending_retry(tmp_path / "jobs.db")
    first.kill()
    second = _server(door, tmp_path, receiver, "second.log", port=first.port)
    servers.append(second.start())
    # A WSGI runtime starts with its first request below the prefix (or from a
    # server hook calling middleware.start()): a client polling its job, here.
    assert httpx.get(second.base + loc, headers=ALICE, timeout=5).status_code == 303
    got = wait_requests(receiver, 2, timeout=30)
    assert got[1].verified == "ok"
    assert got[1].headers["webhook-id"] == refused.headers["webhook-id"]
    assert path_of(sent_status(got[1])["links"]["self"]) == loc
