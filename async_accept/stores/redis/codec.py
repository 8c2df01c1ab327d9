"""How a job's fields are written into (and read back from) a Redis hash."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

from ...job import Job, JobStatus

STATUSES = tuple(s.value for s in JobStatus)

# -- field encoding ----------------------------------------------------------------------

_KINDS = {
    "str": "s",
    "JobStatus": "status",
    "float": "f",
    "int": "i",
    "bool": "b",
    "dict[str, Any]": "j",
}


def _kind(name: str, annotation: object) -> str:
    base = str(annotation).replace(" | None", "")
    try:
        return _KINDS[base]
    except KeyError:  # pragma: no cover - fires when Job grows a field of a new type
        raise TypeError(
            f"Job.{name} has type {annotation!r}, which the Redis store cannot encode"
        ) from None


#: (field name, kind) for every Job attribute, in declaration order. Derived
#: from the dataclass so a new Job field is stored without touching this module.
_FIELDS: tuple[tuple[str, str], ...] = tuple((f.name, _kind(f.name, f.type)) for f in fields(Job))
_NAMES: tuple[str, ...] = tuple(name for name, _ in _FIELDS)
_NAMES_M = (*_NAMES, "_m")  # what the scripts return for a job
_STATUS_AT = _NAMES.index("status")
_CREATED_AT = _NAMES.index("created_at")


def _enc(kind: str, value: Any) -> str:
    if kind == "f":
        return repr(float(value))
    if kind == "i":
        return str(int(value))
    if kind == "b":
        return "1" if value else "0"
    if kind == "status":
        return JobStatus(value).value
    if kind == "j":
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _dec(kind: str, raw: bytes) -> Any:
    if kind == "f":
        return float(raw)
    if kind == "i":
        return int(raw)
    if kind == "b":
        return raw == b"1"
    if kind == "status":
        return JobStatus(raw.decode())
    if kind == "j":
        return json.loads(raw)
    return raw.decode()


def _job(row: Any) -> Job | None:
    """A Job from an HMGET-shaped row (values aligned with ``_NAMES``), or None."""
    if not row or row[_STATUS_AT] is None:  # no status: the hash is gone
        return None
    kwargs = {
        name: _dec(kind, raw)
        for (name, kind), raw in zip(_FIELDS, row, strict=False)
        if raw is not None
    }
    return Job(**kwargs)


def _opt(value: str | bytes | None) -> str | bytes:
    """An optional script argument: ``=value`` when given, ``-`` for None."""
    if value is None:
        return "-"
    if isinstance(value, bytes):
        return b"=" + value
    return "=" + value


def _f(value: float) -> str:
    return repr(float(value))
