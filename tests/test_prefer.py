"""Prefer header parsing (RFC 7240) and Idempotency-Key parsing (RFC 8941 strings)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from async_accept.engine.idempotency import parse_idempotency_key
from async_accept.prefer import parse_prefer, parse_wait

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.!", min_size=1, max_size=12)


def test_names_are_case_insensitive() -> None:
    """Preference names match regardless of case."""
    assert parse_prefer(["Respond-Async"]) == {"respond-async": None}


def test_first_occurrence_wins() -> None:
    """A repeated preference keeps its first value, across header lines too."""
    assert parse_prefer(["wait=5, wait=10", "wait=20"])["wait"] == "5"


def test_values_params_and_quotes() -> None:
    """Token and quoted values, parameters after ';' dropped, whitespace tolerated."""
    prefs = parse_prefer(['respond-async ; foo=bar, wait = 7 , handling="lenient; x"'])
    assert prefs == {"respond-async": None, "wait": "7", "handling": "lenient; x"}


def test_malformed_elements_are_skipped() -> None:
    """A broken element doesn't hide the valid ones around it."""
    prefs = parse_prefer(['=oops, "bad", wait=3, x="unterminated'])
    assert prefs["wait"] == "3"
    assert "oops" not in prefs


def test_wait_parsing() -> None:
    """wait must be a non-negative integer; anything else is ignored."""
    assert parse_wait("0") == 0
    assert parse_wait("25") == 25
    assert parse_wait("-1") is None
    assert parse_wait("1.5") is None
    assert parse_wait("\u0661") is None  # ARABIC-INDIC DIGIT ONE: not an ASCII digit
    assert parse_wait(None) is None


@given(
    prefs=st.lists(st.tuples(TOKEN, st.one_of(st.none(), TOKEN)), min_size=1, max_size=6),
)
def test_round_trip_of_generated_headers(prefs: list[tuple[str, str | None]]) -> None:
    """Generated well-formed headers parse back to their first-occurrence values."""
    header = ", ".join(n if v is None else f"{n}={v}" for n, v in prefs)
    expected: dict[str, str | None] = {}
    for n, v in prefs:
        expected.setdefault(n.lower(), v)
    assert parse_prefer([header]) == expected


@given(junk=st.text(max_size=80))
def test_never_crashes(junk: str) -> None:
    """Arbitrary header text never raises; names come out lower-case."""
    out = parse_prefer([junk])
    assert all(k == k.lower() for k in out)


def test_idempotency_key_forms() -> None:
    """Quoted sf-strings and bare tokens are keys; empty, >255 chars and junk are not."""
    assert parse_idempotency_key(b'"abc-123"') == "abc-123"
    assert parse_idempotency_key(b'"with \\"quote\\""') == 'with "quote"'
    assert parse_idempotency_key(b"bare-token_1") == "bare-token_1"
    assert parse_idempotency_key(b'""') is None
    assert parse_idempotency_key(b"") is None
    assert parse_idempotency_key(b'"' + b"a" * 256 + b'"') is None
    assert parse_idempotency_key(b'"' + b"a" * 255 + b'"') == "a" * 255
    assert parse_idempotency_key(b"has space") is None
    assert parse_idempotency_key('"é"'.encode()) is None


@given(
    key=st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=255
    )
)
def test_idempotency_sf_string_round_trip(key: str) -> None:
    """Any printable-ASCII key, serialized as an sf-string, parses back to itself."""
    serialized = '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    assert parse_idempotency_key(serialized.encode()) == key
