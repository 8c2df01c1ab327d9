"""Where problem ``type``s point: the default base and the check of an app's own."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigurationError

PROBLEM_BASE = "urn:async-accept:problem:"


def check_problem_base(name: str, value: Any) -> str:
    """``value`` as a problem type base: the default URN or an absolute https URL base."""
    if value == PROBLEM_BASE:
        return PROBLEM_BASE
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme != "https" or not parts.netloc or parts.fragment:
        raise ConfigurationError(
            f"{name}={value!r} must be an absolute https URL base, e.g."
            " 'https://docs.example.com/problems/' (a problem's name is appended)"
        )
    return str(value)
