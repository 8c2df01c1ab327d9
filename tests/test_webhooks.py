"""Webhooks: Standard Webhooks signing, the SSRF target policy, the outbox and delivery.

Deliveries go to a real HTTP server on 127.0.0.1 that verifies each signature
with :func:`verify`. Every test runs under a guard that blocks (and fails the
test on) any connect or name lookup outside 127.0.0.0/8, so a wrong policy
can never reach another host.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from async_accept.errors import AsyncAcceptError, ConfigurationError, MissingDependencyError
from async_accept.outbox import (
    Delivery,
    DeliveryState,
    MemoryOutbox,
    Outbox,
    SQLiteOutbox,
    resolve_outbox,
)
from async_accept.webhooks import (
    WebhookDispatcher,
    WebhookPolicy,
    WebhookResolveError,
    WebhookTargetError,
    WebhookVerificationError,
    decode_secret,
    generate_secret,
    sign,
    signature_header,
    verify,
    webhook_headers,
)

# The Standard Webhooks specification's published example
# (standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_PAYLOAD = '{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

SECRET = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc4OQ=="
NOW = 1_700_000_000.0
_LOCAL = ipaddress.ip_network("127.0.0.0/8")

NOT_GUARDED = (socket.AF_UNIX,) if hasattr(socket, "AF_UNIX") else ()


# -- the network guard ----------------------------------------------------------


def _loopback(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip in _LOCAL


@pytest.fixture(autouse=True)
def network_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Block any connect or name lookup that would leave 127.0.0.0/8, and fail the test."""
    violations: list[str] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in NOT_GUARDED:
            return
        host = address[0] if isinstance(address, tuple) else address
        if not _loopback(host):
            violations.append(f"connect to {address!r}")
            raise PermissionError(f"test network guard: connect to {address!r} blocked")

    def connect(self: socket.socket, address: Any) -> None:
        check(self, address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in (None, "localhost") and not _loopback(host):
            violations.append(f"name lookup of {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"test network guard: lookup of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield violations
    assert violations == [], f"the code tried to reach outside 127.0.0.0/8: {violations}"


def test_network_guard_blocks_non_loopback_connects(network_guard: list[str]) -> None:
    """The guard itself refuses a connect or a lookup outside 127.0.0.0/8 before any packet."""
    with socket.socket() as s, pytest.raises(PermissionError):
        s.connect(("10.255.255.1", 9))
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("example.com", 80)
    assert len(network_guard) == 2
    network_guard.clear()


# -- a real receiver --------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: str  # "ok" or the verification error


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records webhooks and answers from a script."""

    port: int = 0
    secret: str = SECRET
    now: float | None = NOW
    requests: list[Received] = field(default_factory=list)
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def answer(self, *responses: tuple[int, dict[str, str]]) -> None:
        with self.lock:
            self.script.extend(responses)

    def handle(self, handler: BaseHTTPRequestHandler) -> tuple[int, dict[str, str]]:
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length)
        try:
            verify(self.secret, handler.headers, body, now=self.now)
            verified = "ok"
        except WebhookVerificationError as exc:
            verified = str(exc)
        with self.lock:
            self.requests.append(
                Received(
                    handler.path, {k.lower(): v for k, v in handler.headers.items()}, body, verified
                )
            )
            reply = self.script.pop(0) if self.script else (204, {})
        self.arrived.set()
        return reply


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real webhook receiver on 127.0.0.1 (threaded http.server)."""
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            status, headers = rec.handle(self)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def table_resolver(table: dict[str, list[str]]) -> Callable[[str, int], list[str]]:
    """A resolver the test controls: unknown names fail like DNS would."""

    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, f"unknown host {host}")
        return list(table[host])

    return resolve


def local_policy(**extra: Any) -> WebhookPolicy:
    """A policy where "hooks.test" is this machine and only 127.0.0.0/8 is let through."""
    table = {"hooks.test": ["127.0.0.1"], "evil.example": ["169.254.169.254"]}
    table.update(extra.pop("table", {}))
    return WebhookPolicy(
        extra.pop("allow", ()),
        allow_networks=["127.0.0.0/8"],
        resolver=table_resolver(table),
        **extra,
    )


def _memory_outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = MemoryOutbox()
    try:
        yield box
    finally:
        box.close()


def _sqlite_outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = SQLiteOutbox(str(tmp_path / "o.db"))
    try:
        yield box
    finally:
        box.close()


def _redis_outbox(tmp_path: Path) -> Iterator[Outbox]:
    from async_accept.stores.redis import RedisOutbox
    from tests.services import require_redis, wipe_redis_namespace

    url = require_redis()
    namespace = "test-" + uuid.uuid4().hex
    box = RedisOutbox.from_url(url, namespace=namespace)
    try:
        yield box
    finally:
        box.close()
        wipe_redis_namespace(url, namespace)


def _postgres_outbox(tmp_path: Path) -> Iterator[Outbox]:
    """The PostgreSQL store's outbox, in a schema of its own dropped afterwards."""
    from tests.services import drop_postgres_schema, postgres_schema_url, require_postgres

    url, schema = postgres_schema_url(require_postgres())
    from async_accept.stores.postgres import PostgresStore

    store = PostgresStore.from_url(url)
    box = store.default_outbox()
    try:
        yield box
    finally:
        box.close()
        store.close()
        drop_postgres_schema(schema)


#: The outbox contract (the ``test_outbox_*`` tests) runs against every entry. A
#: new backend's outbox is one more entry: a function of the test's tmp_path that
#: yields a fresh, empty outbox and releases it afterwards.
OUTBOXES: dict[str, Callable[[Path], Iterator[Outbox]]] = {
    "memory": _memory_outbox,
    "sqlite": _sqlite_outbox,
    "redis": _redis_outbox,
    "postgres": _postgres_outbox,
}


@pytest.fixture(params=list(OUTBOXES))
def outbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outbox]:
    """Each outbox implementation (see OUTBOXES), fresh."""
    yield from OUTBOXES[request.param](tmp_path)


@pytest.fixture
def make_dispatcher() -> Iterator[Callable[..., WebhookDispatcher]]:
    """Builds dispatchers with a fixed clock and jitter, closed after the test."""
    made: list[WebhookDispatcher] = []

    def make(**kwargs: Any) -> WebhookDispatcher:
        kwargs.setdefault("policy", local_policy())
        kwargs.setdefault("clock", lambda: NOW)
        kwargs.setdefault("random", lambda: 0.5)
        kwargs.setdefault("timeout", 5.0)
        d = WebhookDispatcher(kwargs.pop("secret", SECRET), **kwargs)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


STATUS = {"id": "job1", "status": "completed", "links": {"self": "/_jobs/t"}}


# -- signing ----------------------------------------------------------------------


def test_sign_matches_the_specification_example() -> None:
    """sign() reproduces the Standard Webhooks published signature byte for byte."""
    assert sign(SPEC_SECRET, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD) == SPEC_SIGNATURE
    assert sign(SPEC_SECRET, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_PAYLOAD.encode()) == SPEC_SIGNATURE


@pytest.mark.parametrize(
    "secret",
    [SPEC_SECRET, SPEC_SECRET.removeprefix("whsec_"), decode_secret(SPEC_SECRET)],
    ids=["whsec", "bare-base64", "raw-bytes"],
)
def test_verify_accepts_the_specification_example(secret: str | bytes) -> None:
    """verify() accepts the specification's example with the secret in each form."""
    headers = {
        "Webhook-Id": SPEC_MSG_ID,
        "Webhook-Timestamp": str(SPEC_TIMESTAMP),
        "Webhook-Signature": SPEC_SIGNATURE,
    }
    verify(secret, headers, SPEC_PAYLOAD.encode(), now=SPEC_TIMESTAMP)


def test_verify_accepts_one_valid_signature_among_several() -> None:
    """Several space-separated signatures pass when any v1 one matches."""
    sigs = [
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        SPEC_SIGNATURE,
        "garbage",
    ]
    headers = {
        "webhook-id": SPEC_MSG_ID,
        "webhook-timestamp": str(SPEC_TIMESTAMP),
        "webhook-signature": " ".join(sigs),
    }
    verify(SPEC_SECRET, headers, SPEC_PAYLOAD, now=SPEC_TIMESTAMP + 10)


def test_verify_accepts_raw_asgi_headers() -> None:
    """Headers as ASGI (bytes, bytes) pairs are understood."""
    h = webhook_headers(SECRET, "msg_1", NOW, b"{}")
    raw = [(k.encode(), v.encode()) for k, v in h.items()]
    verify(SECRET, raw, b"{}", now=NOW)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_verify_rejects_missing_headers(missing: str) -> None:
    """A webhook without one of the three headers is refused."""
    headers = webhook_headers(SECRET, "msg_1", NOW, b"{}")
    del headers[missing]
    with pytest.raises(WebhookVerificationError, match=missing):
        verify(SECRET, headers, b"{}", now=NOW)


@pytest.mark.parametrize("value", ["hello", "-5", "1.5", "\uff11\uff12\uff13"])
def test_verify_rejects_malformed_timestamps(value: str) -> None:
    """A timestamp that is not whole ASCII seconds is refused."""
    headers = webhook_headers(SECRET, "msg_1", NOW, b"{}")
    headers["webhook-timestamp"] = value
    with pytest.raises(WebhookVerificationError, match="timestamp"):
        verify(SECRET, headers, b"{}", now=NOW, tolerance=None)


@pytest.mark.parametrize("offset", [-301, 301], ids=["too-old", "too-new"])
def test_verify_rejects_timestamps_outside_the_tolerance(offset: int) -> None:
    """A correctly signed webhook more than 5 minutes off the clock is refused (replay)."""
    headers = webhook_headers(SECRET, "msg_1", NOW + offset, b"{}")
    with pytest.raises(WebhookVerificationError, match="too"):
        verify(SECRET, headers, b"{}", now=NOW)
    verify(SECRET, headers, b"{}", now=NOW, tolerance=None)


def test_verify_rejects_another_secret() -> None:
    """A signature made with another secret does not pass."""
    headers = webhook_headers(generate_secret(), "msg_1", NOW, b"{}")
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(SECRET, headers, b"{}", now=NOW)


def test_rotated_secrets_sign_with_each_and_verify_with_any() -> None:
    """With two secrets the header carries two signatures; either secret verifies it."""
    old, new = generate_secret(), generate_secret()
    header = signature_header([new, old], "msg_1", NOW, b"x")
    assert len(header.split(" ")) == 2
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(NOW)),
        "webhook-signature": header,
    }
    verify(old, headers, b"x", now=NOW)
    verify(new, headers, b"x", now=NOW)
    verify([generate_secret(), old], headers, b"x", now=NOW)


@pytest.mark.parametrize("bad", ["whsec_not base64!", "", b"", "whsec_", []])
def test_bad_secrets_are_configuration_errors(bad: Any) -> None:
    """A secret that is not whsec_<base64> or non-empty bytes fails loudly."""
    with pytest.raises(ConfigurationError):
        sign(bad, "m", NOW, b"") if not isinstance(bad, list) else signature_header(
            bad, "m", 0, b""
        )


def test_verification_error_is_an_async_accept_error() -> None:
    """Receivers can catch the package's one exception root."""
    assert issubclass(WebhookVerificationError, AsyncAcceptError)
    assert issubclass(WebhookTargetError, AsyncAcceptError)


msg_ids = st.text(min_size=1, max_size=40).filter(lambda s: " " not in s and s.strip() == s)
timestamps = st.integers(min_value=0, max_value=2**40)
no_fixture_check = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


@no_fixture_check
@given(body=st.binary(max_size=512), msg_id=msg_ids, ts=timestamps)
def test_sign_then_verify_round_trips(body: bytes, msg_id: str, ts: int) -> None:
    """Whatever the body, id and time, what sign() makes verify() accepts."""
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(SECRET, msg_id, ts, body),
    }
    verify(SECRET, headers, body, now=ts)


@no_fixture_check
@given(
    body=st.binary(min_size=1, max_size=256),
    data=st.data(),
)
def test_any_changed_body_byte_fails_verification(body: bytes, data: st.DataObject) -> None:
    """Changing any single byte of the body breaks the signature."""
    headers = webhook_headers(SECRET, "msg_1", NOW, body)
    i = data.draw(st.integers(0, len(body) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != body[i]))
    tampered = body[:i] + bytes([new]) + body[i + 1 :]
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, headers, tampered, now=NOW)


@no_fixture_check
@given(body=st.binary(max_size=64), data=st.data())
def test_any_changed_signature_character_fails_verification(
    body: bytes, data: st.DataObject
) -> None:
    """Changing any single character of the signature header breaks it (padding bits too)."""
    headers = webhook_headers(SECRET, "msg_1", NOW, body)
    sig = headers["webhook-signature"]
    i = data.draw(st.integers(0, len(sig) - 1))
    new = data.draw(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E).filter(lambda c: c != sig[i])
    )
    headers["webhook-signature"] = sig[:i] + new + sig[i + 1 :]
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, headers, body, now=NOW)


# -- the target policy ------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.test/x",
        "file:///etc/passwd",
        "gopher://hooks.test:70/_",
        "javascript:alert(1)",
        "//hooks.test/x",
        "hooks.test/x",
        "http:///nohost",
        "http://hooks.test:99999/",
        "http://hooks\\.test/",
        "http://hooks.test/a b",
        "http://[::1/",
    ],
)
def test_policy_refuses_malformed_and_non_http_urls(url: str) -> None:
    """Only well-formed http(s) URLs are targets."""
    with pytest.raises(WebhookTargetError):
        local_policy().resolve(url)


@pytest.mark.parametrize(
    "url",
    ["http://user:pw@hooks.test/", "http://user@hooks.test/", "https://@hooks.test/"],
)
def test_policy_refuses_userinfo(url: str) -> None:
    """Credentials in the URL (and the '@' confusion they allow) are refused."""
    with pytest.raises(WebhookTargetError, match="userinfo"):
        local_policy().resolve(url)


INTERNAL = [
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "127.0.0.1",
    "127.3.4.5",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "fec0::1",
    "ff02::1",
    "2002:7f00:1::1",
    "64:ff9b::a00:1",
    "2001:db8::1",
]


@pytest.mark.parametrize("address", INTERNAL)
def test_policy_refuses_names_resolving_to_internal_addresses(address: str) -> None:
    """A host resolving to a private/loopback/link-local/... address is refused."""
    policy = WebhookPolicy(resolver=table_resolver({"evil.example": [address]}))
    with pytest.raises(WebhookTargetError, match="resolves to"):
        policy.resolve("https://evil.example/hook")


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:8080/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://0.0.0.0/",
        "http://10.0.0.1/",
    ],
)
def test_policy_refuses_internal_ip_literals_without_resolving(url: str) -> None:
    """An IP literal is checked as is; the resolver is not even asked."""

    def resolver(host: str, port: int) -> list[str]:
        raise AssertionError(f"resolver called for {host}")

    with pytest.raises(WebhookTargetError):
        WebhookPolicy(resolver=resolver).resolve(url)


def test_policy_checks_every_resolved_address() -> None:
    """One internal address among public ones is enough to refuse."""
    policy = WebhookPolicy(
        resolver=table_resolver({"mixed.example": ["8.8.8.8", "2606:4700::1", "10.0.0.1"]})
    )
    with pytest.raises(WebhookTargetError, match=r"10\.0\.0\.1"):
        policy.resolve("https://mixed.example/")


def test_policy_accepts_public_addresses_and_getaddrinfo_tuples() -> None:
    """Public unicast addresses pass; getaddrinfo-shaped answers are understood."""
    infos = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", 443)),
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2606:4700::1", 443, 0, 0)),
    ]
    policy = WebhookPolicy(resolver=lambda host, port: infos)
    target = policy.resolve("https://Hooks.Example.com./x")
    assert target.host == "hooks.example.com"
    assert target.port == 443
    assert target.addresses == ("8.8.8.8", "2606:4700::1")
    assert target.address == "8.8.8.8"


def test_allow_private_and_allow_networks_open_internal_addresses() -> None:
    """allow_private lets internal addresses through; allow_networks only the listed ones."""
    resolver = table_resolver({"a.internal": ["10.1.2.3"], "b.internal": ["10.9.9.9"]})
    assert WebhookPolicy(allow_private=True, resolver=resolver).resolve("http://a.internal/")
    narrow = WebhookPolicy(allow_networks=["10.1.2.0/24"], resolver=resolver)
    assert narrow.resolve("http://a.internal/").address == "10.1.2.3"
    with pytest.raises(WebhookTargetError):
        narrow.resolve("http://b.internal/")


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "224.0.0.1", "ff02::1"])
def test_multicast_and_unspecified_are_refused_even_when_private_is_allowed(address: str) -> None:
    """No policy sends to a multicast or unspecified address."""
    policy = WebhookPolicy(allow_private=True, resolver=table_resolver({"x.test": [address]}))
    with pytest.raises(WebhookTargetError):
        policy.resolve("http://x.test/")


ALLOW = ["hooks.example.com", "*.partner.example", "https://api.example.org/callbacks/", "h2:8443"]


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://hooks.example.com/anything", True),
        ("http://HOOKS.example.com:8080/x", True),
        ("https://hooks.example.com.evil.example/", False),
        ("https://evilhooks.example.com/", False),
        ("https://a.partner.example/cb", True),
        ("https://a.b.partner.example/cb", True),
        ("https://partner.example/cb", False),
        ("https://api.example.org/callbacks/42", True),
        ("https://api.example.org/callbacks/", True),
        ("https://api.example.org/callbacks", False),
        ("https://api.example.org/callbacks/../admin", False),
        ("https://api.example.org/callbacks/%2e%2e/admin", False),
        ("http://api.example.org/callbacks/42", False),
        ("https://api.example.org:444/callbacks/42", False),
        ("https://api.example.org/other", False),
        ("https://h2:8443/", True),
        ("https://h2/", False),
        ("https://unlisted.example/", False),
    ],
)
def test_client_supplied_urls_must_match_the_allow_list(url: str, allowed: bool) -> None:
    """Client callbacks pass only on a host, *.domain or URL-prefix rule (no lookalikes)."""
    policy = WebhookPolicy(ALLOW, resolver=lambda host, port: ["8.8.8.8"])
    assert policy.allows(url) is allowed
    if allowed:
        policy.resolve(url, client_supplied=True)
    else:
        with pytest.raises(WebhookTargetError):
            policy.resolve(url, client_supplied=True)
    policy.resolve(
        url.replace("%2e%2e", "x"), client_supplied=False
    )  # configured URLs need no entry


def test_no_allow_list_means_no_client_supplied_urls() -> None:
    """With an empty allow-list every client-supplied callback is refused."""
    with pytest.raises(WebhookTargetError, match="allow-list"):
        WebhookPolicy(resolver=lambda h, p: ["8.8.8.8"]).check_url(
            "https://x.example/", client_supplied=True
        )


@pytest.mark.parametrize(
    "entry", ["", "ftp://x/", "http://u@x/", "*.", "a/b", "https://x/?q=1", "x:y"]
)
def test_bad_allow_list_entries_fail_at_construction(entry: str) -> None:
    """A malformed allow-list entry is a ConfigurationError, not a silent mismatch."""
    with pytest.raises(ConfigurationError):
        WebhookPolicy([entry])


def test_bad_allow_networks_fail_at_construction() -> None:
    """A malformed CIDR in allow_networks is a ConfigurationError."""
    with pytest.raises(ConfigurationError):
        WebhookPolicy(allow_networks=["10.0.0.0/33"])


def test_unresolvable_names_are_resolve_errors() -> None:
    """A name that doesn't resolve is a (retryable) WebhookResolveError, not a refusal."""
    with pytest.raises(WebhookResolveError):
        local_policy().resolve("http://nowhere.test/")
    with pytest.raises(WebhookResolveError):
        WebhookPolicy(resolver=lambda h, p: []).resolve("http://empty.test/")


def test_check_url_does_no_lookup() -> None:
    """check_url() judges the URL alone, so it is safe on a request path."""

    def resolver(host: str, port: int) -> list[str]:
        raise AssertionError("looked up")

    WebhookPolicy(["hooks.test"], resolver=resolver).check_url(
        "https://hooks.test/x", client_supplied=True
    )


def test_default_resolver_is_getaddrinfo_and_still_refuses_loopback() -> None:
    """The default resolver (the system's getaddrinfo) feeds the same address check."""
    with pytest.raises(WebhookTargetError, match="loopback"):
        WebhookPolicy().resolve("http://localhost:9/")


# -- the outbox contract ------------------------------------------------------------


def _delivery(i: int = 0, **kw: Any) -> Delivery:
    kw.setdefault("url", "http://hooks.test/hook")
    return Delivery(
        id=f"msg_{i}", payload=json.dumps({"n": i}), created_at=NOW + i, next_at=NOW + i, **kw
    )


def test_outbox_enqueue_is_idempotent_on_the_id(outbox: Outbox) -> None:
    """Enqueueing the same webhook-id twice keeps the first delivery."""
    first = outbox.enqueue(_delivery(1))
    again = outbox.enqueue(_delivery(1, url="http://other.test/"))
    assert again.url == first.url == "http://hooks.test/hook"
    assert first.state is DeliveryState.PENDING
    assert len(outbox.list_deliveries()) == 1


def test_outbox_claims_a_due_delivery_once_until_its_lease_ends(outbox: Outbox) -> None:
    """due() hands a delivery to one caller; it comes back only after the lease expires."""
    outbox.enqueue(_delivery(0))
    outbox.enqueue(_delivery(50))
    assert outbox.due(NOW - 1) == []
    claimed = outbox.due(NOW, limit=10, lease=30)
    assert [d.id for d in claimed] == ["msg_0"]
    assert claimed[0].state is DeliveryState.SENDING and claimed[0].claim
    assert outbox.due(NOW + 29) == []
    again = outbox.due(NOW + 30, lease=30)
    assert [d.id for d in again] == ["msg_0"]
    assert again[0].claim != claimed[0].claim
    assert not outbox.mark_sent(claimed[0], now=NOW + 31, attempts=1, status=204)
    assert outbox.mark_sent(again[0], now=NOW + 31, attempts=1, status=204)
    stored = outbox.get("msg_0")
    assert stored is not None and stored.state is DeliveryState.SENT and stored.claim is None


def test_outbox_retry_dead_and_replay(outbox: Outbox) -> None:
    """A retry comes back when due; a dead letter is listed and replay makes it pending again."""
    outbox.enqueue(_delivery(0))
    (d,) = outbox.due(NOW)
    assert outbox.mark_retry(d, now=NOW, next_at=NOW + 10, attempts=1, last_error="HTTP 500")
    assert not outbox.mark_retry(d, now=NOW, next_at=NOW, attempts=1, last_error="stale claim")
    assert outbox.due(NOW + 9) == []
    (d,) = outbox.due(NOW + 10)
    assert d.attempts == 1 and d.last_error == "HTTP 500"
    assert outbox.mark_dead(d, now=NOW + 10, attempts=2, last_error="HTTP 503", status=503)
    assert outbox.due(NOW + 1e9) == []
    (dead,) = outbox.list_dead()
    assert (dead.id, dead.attempts, dead.last_status) == ("msg_0", 2, 503)
    assert outbox.replay("msg_0", NOW + 20) is not None
    assert outbox.replay("msg_0", NOW + 20) is None  # no longer dead
    assert outbox.replay("msg_unknown", NOW) is None
    (d,) = outbox.due(NOW + 20)
    assert d.attempts == 0


def test_outbox_records_disabled_endpoints(outbox: Outbox) -> None:
    """An endpoint disabled by a 410 stays disabled until enabled again."""
    url = "https://gone.example/hook"
    assert not outbox.endpoint_disabled(url)
    outbox.disable_endpoint(url, NOW, "410 Gone")
    outbox.disable_endpoint(url, NOW + 5, "again")
    assert outbox.endpoint_disabled(url)
    assert [(e.url, e.disabled_at, e.reason) for e in outbox.list_disabled()] == [
        (url, NOW, "410 Gone")
    ]
    assert outbox.enable_endpoint(url)
    assert not outbox.enable_endpoint(url)
    assert not outbox.endpoint_disabled(url)


def test_outbox_purges_old_sent_deliveries(outbox: Outbox) -> None:
    """purge_sent() deletes sent deliveries only, and only old ones."""
    for i in range(3):
        outbox.enqueue(_delivery(i))
    a, b, _c = outbox.due(NOW + 5, limit=3)
    outbox.mark_sent(a, now=NOW, attempts=1, status=200)
    outbox.mark_sent(b, now=NOW + 100, attempts=1, status=200)
    assert outbox.purge_sent(NOW + 50) == 1
    assert {d.id for d in outbox.list_deliveries()} == {"msg_1", "msg_2"}


def test_sqlite_outbox_claims_are_exclusive_across_connections(tmp_path: Path) -> None:
    """Four claimers on separate connections never get the same delivery."""
    path = str(tmp_path / "shared.db")
    seed = SQLiteOutbox(path)
    for i in range(200):
        seed.enqueue(
            Delivery(id=f"msg_{i}", url="http://h.test/", payload="{}", created_at=NOW, next_at=NOW)
        )
    boxes = [SQLiteOutbox(path) for _ in range(4)]
    got: list[list[str]] = [[] for _ in boxes]
    start = threading.Barrier(len(boxes))

    def claim(n: int) -> None:
        start.wait()
        while batch := boxes[n].due(NOW + 1, limit=3):
            got[n].extend(d.id for d in batch)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(len(boxes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    claimed = [i for ids in got for i in ids]
    assert len(claimed) == len(set(claimed)) == 200
    for box in [seed, *boxes]:
        box.close()


def test_sqlite_outbox_keeps_json_text(tmp_path: Path) -> None:
    """The SQLite outbox stores the payload as the exact JSON text, never pickled."""
    import sqlite3

    path = tmp_path / "o.db"
    box = SQLiteOutbox(str(path))
    box.enqueue(_delivery(3))
    box.close()
    with sqlite3.connect(path) as con:
        (payload,) = con.execute("SELECT payload FROM webhook_deliveries").fetchone()
    con.close()
    assert payload == '{"n": 3}'


def test_resolve_outbox_understands_urls_and_instances(tmp_path: Path) -> None:
    """'memory://', 'sqlite:///path' and instances resolve; anything else fails early."""
    assert isinstance(resolve_outbox("memory://"), MemoryOutbox)
    box = resolve_outbox(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(box, SQLiteOutbox) and box.path == f"{tmp_path}/x.db"
    box.close()
    mem = MemoryOutbox()
    assert resolve_outbox(mem) is mem
    for bad in ("redis://localhost", object()):
        with pytest.raises(ConfigurationError):
            resolve_outbox(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        SQLiteOutbox(":memory:")


# -- delivery -----------------------------------------------------------------------


def test_delivery_is_signed_and_verified_by_the_receiver(
    receiver: Receiver, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """A delivery POSTs the status JSON with Standard Webhooks headers the receiver verifies."""
    d = make_dispatcher()
    delivery = d.enqueue(receiver.url(), STATUS, job_id="job1")
    assert d.deliver_due(NOW) == 1
    (req,) = receiver.requests
    assert req.verified == "ok"
    assert json.loads(req.body) == STATUS
    assert req.headers["content-type"] == "application/json"
    assert req.headers["webhook-id"] == delivery.id
    assert req.headers["webhook-timestamp"] == str(int(NOW))
    assert req.headers["webhook-signature"].startswith("v1,")
    stored = d.outbox.get(delivery.id)
    assert stored is not None
    assert (stored.state, stored.attempts, stored.last_status) == (DeliveryState.SENT, 1, 204)
    assert d.deliver_due(NOW) == 0


def test_connects_to_the_checked_address_and_keeps_the_host_name(
    receiver: Receiver, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """The connection goes to the address the policy approved; Host still names the target."""
    lookups: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    policy = WebhookPolicy(allow_networks=["127.0.0.0/8"], resolver=resolver)
    d = make_dispatcher(policy=policy)
    # "hooks.test" is unknown to the system resolver (and the guard fails the test
    # on any real lookup of it): only the pinned address can have been used.
    d.enqueue(receiver.url(host="hooks.test"), STATUS)
    assert d.deliver_due(NOW) == 1
    (req,) = receiver.requests
    assert req.headers["host"] == f"hooks.test:{receiver.port}"
    assert req.verified == "ok"
    assert lookups == ["hooks.test"]


def test_every_attempt_checks_the_target_again(
    receiver: Receiver, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """A name that rebinds to an internal address between attempts is refused on the retry."""
    answers = [["127.0.0.1"], ["169.254.169.254"]]
    policy = WebhookPolicy(
        allow_networks=["127.0.0.0/8"], resolver=lambda host, port: answers.pop(0)
    )
    d = make_dispatcher(policy=policy)
    receiver.answer((500, {}))
    delivery = d.enqueue(receiver.url(host="rebind.test"), STATUS)
    d.deliver_due(NOW)
    d.deliver_due(NOW + 3600)
    assert len(receiver.requests) == 1
    stored = d.outbox.get(delivery.id)
    assert stored is not None and stored.state is DeliveryState.DEAD
    assert stored.last_error is not None and "169.254.169.254" in stored.last_error


def test_failed_delivery_is_retried_later_with_the_same_id(
    receiver: Receiver, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """A 500 schedules a retry (backoff with jitter); the retry carries the same webhook-id."""
    d = make_dispatcher(backoff_base=10.0)
    receiver.answer((500, {}))
    delivery = d.enqueue(receiver.url(), STATUS)
    assert d.deliver_due(NOW) == 1
    stored = d.outbox.get(delivery.id)
    assert stored is not None
    assert (stored.state, stored.attempts, stored.last_status) == (DeliveryState.PENDING, 1, 500)
    assert stored.next_at == NOW + 5.0  # random 0.5 x ceiling 10
    assert d.deliver_due(NOW + 4) == 0
    receiver.now = NOW + 5
    assert d.deliver_due(NOW + 5) == 1
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.id
    assert second.headers["webhook-timestamp"] == str(int(NOW + 5))
    assert second.verified == "ok"
    stored = d.outbox.get(delivery.id)
    assert stored is not None and (stored.state, stored.attempts) == (DeliveryState.SENT, 2)


def test_backoff_is_exponential_with_full_jitter_and_a_cap(
    make_dispatcher: Callable[..., WebhookDispatcher],
) -> None:
    """The n-th retry waits random x min(cap, base x 2^(n-1)), or the configured schedule."""
    draws = iter([1.0, 1.0, 1.0, 1.0, 0.25, 0.0])
    d = make_dispatcher(backoff_base=5.0, backoff_cap=30.0, random=lambda: next(draws))
    assert [d.retry_delay(n, None, NOW) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 30.0]
    assert d.retry_delay(2, None, NOW) == 2.5
    assert d.retry_delay(1, None, NOW) == 1.0  # never sooner than a second
    s = make_dispatcher(schedule=[2, 60, 600], random=lambda: 1.0)
    assert [s.retry_delay(n, None, NOW) for n in (1, 2, 3, 4, 9)] == [2, 60, 600, 600, 600]


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_receiver_retry_after_is_honoured(
    form: str, receiver: Receiver, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """A 429/503 with Retry-After (seconds or HTTP date) sets the next attempt's time."""
    d = make_dispatcher()
    value = "120" if form == "seconds" else formatdate(NOW + 120, usegmt=True)
    receiver.answer((429, {"Retry-After": value}))
    delivery = d.enqueue(receiver.url(), STATUS)
    d.deliver_due(NOW)
    stored = d.outbox.get(delivery.id)
    assert stored is not None and stored.next_at == NOW + 120
    assert d.deliver_due(NOW + 119) == 0
    receiver.now = NOW + 120
    assert d.deliver_due(NOW + 120) == 1
    assert [r.verified for r in receiver.requests] == ["ok", "ok"]


def test_retry_after_is_capped(
    receiver: Receiver, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """A receiver can't park a delivery beyond max_retry_after."""
    d = make_dispatcher(max_retry_after=600)
    receiver.answer((503, {"Retry-After": "999999"}))
    delivery = d.enqueue(receiver.url(), STATUS)
    d.deliver_due(NOW)
    stored = d.outbox.get(delivery.id)
    assert stored is not None and stored.next_at == NOW + 600


def test_gone_disables_the_endpoint_for_good(
    receiver: Receiver, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """A 410 kills the delivery, records the endpoint, and nothing is sent there again."""
    d = make_dispatcher()
    receiver.answer((410, {}))
    url = receiver.url()
    first = d.enqueue(url, STATUS)
    d.deliver_due(NOW)
    second = d.enqueue(url, {**STATUS, "id": "job2"})
    other = d.enqueue(receiver.url("/other"), STATUS)
    d.deliver_due(NOW + 1)
    assert [r.path for r in receiver.requests] == ["/hook", "/other"]
    for delivery_id in (first.id, second.id):
        stored = d.outbox.get(delivery_id)
        assert stored is not None and stored.state is DeliveryState.DEAD
    assert [e.url for e in d.list_disabled()] == [url]
    stored_other = d.outbox.get(other.id)
    assert stored_other is not None and stored_other.state is DeliveryState.SENT
    assert d.enable_endpoint(url)
    assert d.replay(second.id, now=NOW + 2) is not None
    d.deliver_due(NOW + 2)
    assert [r.path for r in receiver.requests] == ["/hook", "/other", "/hook"]


def test_spent_delivery_becomes_a_dead_letter_that_can_be_replayed(
    receiver: Receiver, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """After max_attempts failures the delivery is dead; replay sends it again."""
    d = make_dispatcher(max_attempts=3)
    receiver.answer((500, {}), (502, {}), (503, {}))
    delivery = d.enqueue(receiver.url(), STATUS)
    t = NOW
    for _ in range(3):
        assert d.deliver_due(t) == 1
        t += 3600
    assert d.deliver_due(t) == 0
    (dead,) = d.list_dead()
    assert (dead.id, dead.attempts, dead.last_error) == (delivery.id, 3, "HTTP 503")
    assert d.replay(delivery.id, now=t) is not None
    receiver.now = t
    assert d.deliver_due(t) == 1
    assert d.list_dead() == []
    assert len(receiver.requests) == 4 and receiver.requests[-1].verified == "ok"


def test_connection_failures_are_retried(make_dispatcher: Callable[..., WebhookDispatcher]) -> None:
    """A receiver that refuses connections gets a retry, not a lost delivery."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    d = make_dispatcher()
    delivery = d.enqueue(f"http://hooks.test:{port}/hook", STATUS)
    assert d.deliver_due(NOW) == 1
    stored = d.outbox.get(delivery.id)
    assert stored is not None and stored.state is DeliveryState.PENDING
    assert stored.last_error is not None and "ConnectError" in stored.last_error


def test_redirects_are_not_followed(
    receiver: Receiver, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """A receiver's redirect (e.g. to a metadata address) is a failure, never followed."""
    d = make_dispatcher()
    receiver.answer((302, {"Location": "http://169.254.169.254/latest/meta-data/"}))
    delivery = d.enqueue(receiver.url(), STATUS)
    d.deliver_due(NOW)
    stored = d.outbox.get(delivery.id)
    assert stored is not None and stored.state is DeliveryState.PENDING
    assert stored.last_error == "HTTP 302"
    assert len(receiver.requests) == 1


def test_refused_target_is_dead_without_any_connection(
    make_dispatcher: Callable[..., WebhookDispatcher],
) -> None:
    """An allow-listed callback whose name resolves to 169.254.169.254 is never contacted."""
    d = make_dispatcher(policy=local_policy(allow=["evil.example"]))
    delivery = d.enqueue("http://evil.example/hook", STATUS, client_supplied=True)
    assert d.deliver_due(NOW) == 1
    stored = d.outbox.get(delivery.id)
    assert stored is not None and stored.state is DeliveryState.DEAD
    assert stored.last_error is not None and stored.last_error.startswith("refused:")


def test_client_supplied_url_off_the_allow_list_is_refused_at_enqueue(
    make_dispatcher: Callable[..., WebhookDispatcher],
) -> None:
    """A client's callback URL not on the allow-list is refused before anything is stored."""
    d = make_dispatcher(policy=local_policy(allow=["hooks.test"]))
    with pytest.raises(WebhookTargetError):
        d.enqueue("http://127.0.0.1:1/x", STATUS, client_supplied=True)
    with pytest.raises(WebhookTargetError):
        d.enqueue("gopher://hooks.test/", STATUS)
    assert d.outbox.list_deliveries() == []
    d.enqueue("http://hooks.test/x", STATUS, client_supplied=True)


def test_unresolvable_target_is_retried(make_dispatcher: Callable[..., WebhookDispatcher]) -> None:
    """A DNS failure is a passing fault: the delivery is retried, not killed."""
    d = make_dispatcher()
    delivery = d.enqueue("http://unknown.test/hook", STATUS)
    d.deliver_due(NOW)
    stored = d.outbox.get(delivery.id)
    assert stored is not None and stored.state is DeliveryState.PENDING
    assert stored.attempts == 1 and stored.last_error is not None


def test_deliveries_survive_a_restart(
    receiver: Receiver, make_dispatcher: Callable[..., WebhookDispatcher], tmp_path: Path
) -> None:
    """A delivery enqueued before a restart is sent by the next process's dispatcher."""
    path = str(tmp_path / "jobs.db")
    before = make_dispatcher(outbox=f"sqlite:///{path}")
    delivery = before.enqueue(receiver.url(), STATUS)
    before.close()
    after = make_dispatcher(outbox=SQLiteOutbox(path))
    assert after.deliver_due(NOW) == 1
    assert [r.headers["webhook-id"] for r in receiver.requests] == [delivery.id]
    stored = after.outbox.get(delivery.id)
    assert stored is not None and stored.state is DeliveryState.SENT
    after.outbox.close()


def test_background_runner_delivers_and_stops(
    receiver: Receiver, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """start() delivers in a thread as deliveries arrive; stop() ends it."""
    import time

    receiver.now = None
    d = make_dispatcher(clock=time.time, interval=0.05)
    d.start()
    d.start()  # idempotent
    d.enqueue(receiver.url(), STATUS)
    assert receiver.arrived.wait(10)
    d.stop()
    assert d._thread is None
    (req,) = receiver.requests
    assert req.verified == "ok"


def test_dispatcher_validates_its_options(
    make_dispatcher: Callable[..., WebhookDispatcher],
) -> None:
    """Bad secrets and numbers fail at construction."""
    cases: list[dict[str, Any]] = [
        {"secret": "whsec_***"},
        {"max_attempts": 0},
        {"schedule": []},
        {"timeout": 0},
        {"batch_size": 0},
        {"lease": 1.0},
    ]
    for kwargs in cases:
        with pytest.raises(ConfigurationError):
            make_dispatcher(**kwargs)


def test_missing_httpx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without httpx the dispatcher says which extra to install."""
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(MissingDependencyError, match=r"async-accept\[client\]"):
        WebhookDispatcher(SECRET)


def test_importing_webhooks_does_not_import_httpx() -> None:
    """httpx stays optional: importing these modules does not load it."""
    code = (
        "import sys, async_accept.webhooks, async_accept.outbox, async_accept.client; "
        "assert 'httpx' not in sys.modules, 'httpx imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_policy_refusal_says_why_a_callback_is_refused_without_dns() -> None:
    """WebhookPolicy.refusal: None for an allowed host name (no lookup), the reason otherwise."""

    def no_dns(host: str, port: int) -> list[str]:
        raise AssertionError("refusal() must not resolve a host name")

    policy = WebhookPolicy(["hooks.example.com", "10.0.0.5"], resolver=no_dns)
    assert policy.refusal("https://hooks.example.com/done") is None
    assert policy.refusal("https://other.example.com/") == (
        "a client-supplied callback URL not on the allow-list"
    )
    private = policy.refusal("http://10.0.0.5/hook")
    assert private is not None and "resolves to 10.0.0.5" in private
    assert policy.refusal("ftp://hooks.example.com/") is not None
    assert WebhookPolicy(["10.0.0.5"], allow_private=True).refusal("http://10.0.0.5/") is None


def test_default_retries_follow_the_standard_webhooks_schedule(
    make_dispatcher: Callable[..., WebhookDispatcher],
) -> None:
    """By default: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (up to 10 % earlier), 8 attempts
    spanning more than a day, and a 15 s timeout."""
    from async_accept.webhooks.dispatcher import STANDARD_SCHEDULE

    late = make_dispatcher(random=lambda: 1.0)
    early = make_dispatcher(random=lambda: 0.0)
    planned = [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    assert list(STANDARD_SCHEDULE) == planned
    assert [late.retry_delay(n, None, NOW) for n in range(1, 8)] == planned
    assert [early.retry_delay(n, None, NOW) for n in range(1, 8)] == [p * 0.9 for p in planned]
    assert late.max_attempts == 8
    assert sum(early.retry_delay(n, None, NOW) for n in range(1, 8)) > 86400
    default = WebhookDispatcher(SECRET, policy=local_policy())
    try:
        assert default.timeout == 15.0
    finally:
        default.close()


def test_a_delivery_recorded_without_payload_is_rendered_when_claimed(
    receiver: Receiver, make_dispatcher: Callable[..., WebhookDispatcher]
) -> None:
    """A delivery its store wrote with the job's end, never filled in (the process died):
    the dispatcher has it rendered, sends that, and keeps it; without a renderer it waits
    as a failed attempt; when the job is gone it becomes a dead letter."""
    d = make_dispatcher()
    rendered: list[str] = []

    def render(delivery: Delivery) -> str | None:
        rendered.append(delivery.id)
        return None if delivery.job_id == "gone" else json.dumps(STATUS)

    def recorded(msg: str, job_id: str) -> None:
        d.outbox.enqueue(
            Delivery(msg, receiver.url(), "", NOW, NOW, job_id=job_id, client_supplied=False)
        )

    recorded("msg_waits", "job1")
    assert d.deliver_due(NOW) == 1  # no renderer yet: a failed attempt, nothing sent
    waits = d.outbox.get("msg_waits")
    assert waits is not None and waits.state is DeliveryState.PENDING
    assert waits.attempts == 1 and waits.last_error == "payload not written yet"
    d.render = render
    recorded("msg_sent", "job1")
    recorded("msg_gone", "gone")
    assert d.deliver_due(NOW) == 2
    assert sorted(rendered) == ["msg_gone", "msg_sent"]
    assert [json.loads(r.body) for r in receiver.requests] == [STATUS]
    sent = d.outbox.get("msg_sent")
    assert sent is not None and sent.state is DeliveryState.SENT
    assert sent.payload == json.dumps(STATUS)
    gone = d.outbox.get("msg_gone")
    assert gone is not None and gone.state is DeliveryState.DEAD
    assert gone.last_error == "its job is gone or not over"


def test_enqueue_of_a_recorded_delivery_fills_in_its_payload(
    make_dispatcher: Callable[..., WebhookDispatcher],
) -> None:
    """enqueue(recorded=True) fills in the payload of the delivery the store wrote, and
    writes the delivery itself when the store did not (nor ever overwrites a payload)."""
    d = make_dispatcher()
    url = "http://127.0.0.1:9/hook"
    d.outbox.enqueue(Delivery("msg_rec", url, "", NOW, NOW, job_id="job1"))
    d.enqueue(url, STATUS, job_id="job1", msg_id="msg_rec", recorded=True)
    d.enqueue(url, {"other": 1}, job_id="job1", msg_id="msg_rec", recorded=True)
    d.enqueue(url, STATUS, job_id="job2", msg_id="msg_new", recorded=True)
    for msg in ("msg_rec", "msg_new"):
        stored = d.outbox.get(msg)
        assert stored is not None and json.loads(stored.payload) == STATUS
