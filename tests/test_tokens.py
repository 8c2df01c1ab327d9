"""Status-URL tokens: signed, tamper-evident, rotating, expiring (PROTOCOL.md 1, 4)."""

from __future__ import annotations

import hashlib
import hmac

import itsdangerous
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_accept.job import new_job_id
from async_accept.tokens import TokenError, TokenExpired, TokenSigner

KEY = b"k" * 32
IDS = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
    min_size=1,
    max_size=40,
)


@given(job_id=IDS)
def test_sign_unsign_round_trip(job_id: str) -> None:
    """Any job id signs into a token that verifies back to the same id."""
    s = TokenSigner([KEY], 3600)
    assert s.unsign(s.sign(job_id)) == job_id


@settings(max_examples=300)
@given(job_id=IDS, data=st.data())
def test_no_tampered_token_ever_validates(job_id: str, data: st.DataObject) -> None:
    """Changing any one character of a token never yields a valid token."""
    s = TokenSigner([KEY], 3600)
    token = s.sign(job_id, 1_800_000_000)
    s2 = TokenSigner([KEY], 10**10, lambda: 1_800_000_001.0)
    i = data.draw(st.integers(0, len(token) - 1))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    c = data.draw(st.sampled_from(alphabet).filter(lambda ch: ch != token[i]))
    tampered = token[:i] + c + token[i + 1 :]
    with pytest.raises(TokenError):
        s2.unsign(tampered)


@given(junk=st.text(max_size=200))
def test_arbitrary_text_never_validates(junk: str) -> None:
    """Arbitrary strings (unicode, empty, dots) are rejected, never crash."""
    s = TokenSigner([KEY], 3600)
    with pytest.raises(TokenError):
        s.unsign(junk)


def test_rotation_newest_signs_all_verify() -> None:
    """Keys are newest first: the newest signs, every listed key verifies."""
    old = TokenSigner([b"old" * 8], 3600)
    token = old.sign("job1")
    rotated = TokenSigner([b"new" * 8, b"old" * 8], 3600)
    assert rotated.unsign(token) == "job1"
    new_token = rotated.sign("job1")
    assert TokenSigner([b"new" * 8], 3600).unsign(new_token) == "job1"
    with pytest.raises(TokenError):
        old.unsign(new_token)


def test_unknown_key_is_rejected() -> None:
    """A token signed with a key not in the list is rejected."""
    token = TokenSigner([b"a" * 20], 3600).sign("j")
    with pytest.raises(TokenError):
        TokenSigner([b"b" * 20], 3600).unsign(token)


def test_expired_token_raises_expired_with_id() -> None:
    """A valid token past the TTL raises TokenExpired (the 410 case), carrying the id."""
    signer = TokenSigner([KEY], 60, lambda: 1_000_000.0)
    token = signer.sign("jobX")
    later = TokenSigner([KEY], 60, lambda: 1_000_061.0)
    with pytest.raises(TokenExpired) as info:
        later.unsign(token)
    assert info.value.job_id == "jobX"
    assert TokenSigner([KEY], 60, lambda: 1_000_059.0).unsign(token) == "jobX"


def test_token_is_deterministic_for_issue_time() -> None:
    """With the job's creation time the token is the same every time (idempotent repeats)."""
    s = TokenSigner([KEY], 3600)
    assert s.sign("j", 1_700_000_000.4) == s.sign("j", 1_700_000_000.9)


@given(job_id=IDS, issued=st.integers(min_value=0, max_value=2**40), rotate=st.booleans())
def test_tokens_are_exactly_itsdangerous_timestamp_tokens(
    job_id: str, issued: int, rotate: bool
) -> None:
    """Tokens are itsdangerous TimestampSigner tokens of the newest key (the wire format)."""
    keys = [KEY, b"older-key"] if rotate else [KEY]
    s = TokenSigner(keys, 3600)
    reference = itsdangerous.TimestampSigner(
        KEY, salt=b"async_accept.job-token", digest_method=hashlib.sha256
    )
    reference.get_timestamp = lambda: issued  # type: ignore[method-assign]
    assert s.sign(job_id, issued + 0.5) == reference.sign(job_id).decode("ascii")


@given(material=st.binary(max_size=100))
def test_owner_hash_is_a_keyed_hmac_of_the_material(material: bytes) -> None:
    """The owner hash is HMAC-SHA256 under a key derived from the newest secret."""
    s = TokenSigner([KEY, b"older-key"], 3600)
    key = hmac.new(KEY, b"async_accept.owner", hashlib.sha256).digest()
    assert s.owner_hash(material) == hmac.new(key, material, hashlib.sha256).hexdigest()


def test_job_ids_have_128_bits() -> None:
    """Job ids carry 128 random bits (22 url-safe characters) and don't repeat."""
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 22 for i in ids)


@given(material=st.binary(max_size=100), other=st.binary(max_size=100))
def test_owner_hash_matches_only_same_material(material: bytes, other: bytes) -> None:
    """The owner hash matches the same credentials and no others, under any listed key."""
    s = TokenSigner([b"n" * 16, b"o" * 16], 3600)
    h = s.owner_hash(material)
    assert s.owner_matches(h, material)
    assert s.owner_matches(h, other) == (material == other)
    old_only = TokenSigner([b"o" * 16], 3600).owner_hash(material)
    assert s.owner_matches(old_only, material)


def test_cached_verification_still_expires() -> None:
    """A token verified once (and cached) still turns expired when its TTL passes."""
    now = [1_000_000.0]
    signer = TokenSigner([KEY], 60, lambda: now[0])
    token = signer.sign("jobC")
    assert signer.unsign(token) == "jobC"
    assert signer.unsign(token) == "jobC"  # from the cache
    now[0] += 61
    with pytest.raises(TokenExpired):
        signer.unsign(token)
    with pytest.raises(TokenError):
        signer.unsign(token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))
