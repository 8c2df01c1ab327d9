"""``Prefer`` request header parsing (RFC 7240).

Names are case-insensitive, unknown preferences are ignored by callers, and
the first occurrence of a preference wins (RFC 7240 section 2).
"""

from __future__ import annotations

from collections.abc import Iterable

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t":
        i += 1
    return i


def _token(s: str, i: int) -> tuple[str, int]:
    j = i
    while j < len(s) and s[j] in _TCHAR:
        j += 1
    return s[i:j], j


def _word(s: str, i: int) -> tuple[str | None, int]:
    """A token or quoted-string at ``i``; None when neither is there."""
    if i < len(s) and s[i] == '"':
        out: list[str] = []
        j = i + 1
        while j < len(s):
            c = s[j]
            if c == "\\" and j + 1 < len(s):
                out.append(s[j + 1])
                j += 2
                continue
            if c == '"':
                return "".join(out), j + 1
            out.append(c)
            j += 1
        return None, len(s)  # unterminated
    tok, j = _token(s, i)
    return (tok, j) if tok else (None, i)


def _skip_to_comma(s: str, i: int) -> int:
    """Recover from a malformed element: skip to the next top-level comma."""
    in_quote = False
    while i < len(s):
        c = s[i]
        if in_quote:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == ",":
            return i
        i += 1
    return i


def parse_prefer(values: Iterable[str]) -> dict[str, str | None]:
    """Preferences from one or more ``Prefer`` header values: lower-cased name
    -> value (None when given without ``=``). Parameters after ``;`` are
    parsed and dropped; malformed elements are skipped."""
    prefs: dict[str, str | None] = {}
    for header in values:
        s = header
        i = 0
        n = len(s)
        while i < n:
            i = _skip_ws(s, i)
            if i < n and s[i] == ",":
                i += 1
                continue
            name, j = _token(s, i)
            if not name:
                i = _skip_to_comma(s, i) + 1
                continue
            value: str | None = None
            k = _skip_ws(s, j)
            ok = True
            if k < n and s[k] == "=":
                k = _skip_ws(s, k + 1)
                value, k = _word(s, k)
                if value is None:
                    ok = False
            # parameters: *( OWS ";" [ OWS parameter ] )
            while ok:
                k = _skip_ws(s, k)
                if k < n and s[k] == ";":
                    k = _skip_ws(s, k + 1)
                    pname, k2 = _token(s, k)
                    if pname:
                        k = _skip_ws(s, k2)
                        if k < n and s[k] == "=":
                            k = _skip_ws(s, k + 1)
                            pv, k = _word(s, k)
                            if pv is None:
                                ok = False
                    continue
                break
            k = _skip_ws(s, k)
            if ok and (k >= n or s[k] == ","):
                key = name.lower()
                if key not in prefs:
                    prefs[key] = value
                i = k + 1
            else:
                i = _skip_to_comma(s, k) + 1
    return prefs


def parse_wait(value: str | None) -> int | None:
    """``wait=N`` as a non-negative integer of seconds; None when absent or malformed."""
    if value is None or not value.isdigit() or not value.isascii():
        return None
    return int(value)
