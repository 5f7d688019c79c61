"""Parse ``WWW-Authenticate`` headers (RFC 7235 section 4.1, RFC 6750 section 3).

A registry answers 401 with a challenge that says how to authenticate, for example Docker
Hub's ``Bearer realm="https://auth.docker.io/token",service="registry.docker.io"``. The
header is a list of challenges, each a scheme followed by either a token68 or
comma-separated ``name=value`` auth-params whose values may be quoted strings. Values
contain commas (``scope="repository:x:pull,push"``), so the header cannot be split on ``,``:
this module walks it with a small hand-written scanner instead.

The parser never raises: a registry that sends a malformed header gets the challenges that
could be read before the damage, and pure garbage yields ``()``, so the caller can fall back
to anonymous access or report "unsupported authentication" in its own words.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Challenge", "format_www_authenticate", "parse_www_authenticate"]

# RFC 7230 tchar and RFC 7235 token68 characters.
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789"
                   "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TOKEN68 = frozenset("-._~+/0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SPACE = " \t"


def _is_token(text: str) -> bool:
    return bool(text) and all(c in _TCHAR for c in text)


@dataclass(frozen=True, slots=True)
class Challenge:
    """One authentication challenge: a lower-case scheme and its parameters.

    ``params`` is a tuple of ``(name, value)`` pairs with lower-case names, in header order;
    use :meth:`get` to read one. ``token68`` holds the rare token68 form instead of params.
    """

    scheme: str
    params: tuple[tuple[str, str], ...] = ()
    token68: str | None = None

    def __post_init__(self) -> None:
        if not _is_token(self.scheme) or self.scheme != self.scheme.lower():
            raise ValueError(f"auth scheme must be a lower-case token, not {self.scheme!r}")
        for pair in self.params:
            if (not isinstance(pair, tuple) or len(pair) != 2 or not _is_token(pair[0])
                    or pair[0] != pair[0].lower() or not isinstance(pair[1], str)):
                raise ValueError(f"auth-param must be a (lower-case token, str) pair: {pair!r}")
        if self.token68 is not None:
            if self.params:
                raise ValueError("a challenge has either a token68 or auth-params, not both")
            body = self.token68.rstrip("=")
            if not body or any(c not in _TOKEN68 for c in body):
                raise ValueError(f"not a token68: {self.token68!r}")

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of the first parameter called ``name`` (case-insensitive)."""
        wanted = name.lower()
        return next((value for key, value in self.params if key == wanted), default)

    def __str__(self) -> str:
        """The challenge as a header value, with every parameter value quoted."""
        if self.token68 is not None:
            return f"{self.scheme} {self.token68}"
        if not self.params:
            return self.scheme
        return f"{self.scheme} " + ", ".join(f"{k}={_quote(v)}" for k, v in self.params)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_www_authenticate(challenges: Iterable[Challenge]) -> str:
    """Join challenges into one header value (the inverse of :func:`parse_www_authenticate`)."""
    return ", ".join(str(c) for c in challenges)


class _Malformed(Exception):
    """Internal: the scanner met something it cannot read."""


class _Scanner:
    """A cursor over the header value; each method consumes one grammar element."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def at_element_end(self) -> bool:
        """Whether the current list element ends here (end of header or a comma)."""
        return self.peek() in ("", ",")

    def skip(self, chars: str) -> None:
        while self.peek() and self.peek() in chars:
            self.pos += 1

    def read_while(self, allowed: frozenset[str]) -> str:
        start = self.pos
        while self.peek() and self.peek() in allowed:
            self.pos += 1
        return self.text[start:self.pos]

    def read_quoted(self) -> str:
        """Read a quoted-string (the opening quote is next), undoing quoted-pairs."""
        self.pos += 1
        out: list[str] = []
        while True:
            char = self.peek()
            if not char:
                raise _Malformed("unterminated quoted-string")
            self.pos += 1
            if char == '"':
                return "".join(out)
            if char == "\\":
                char = self.peek()
                if not char:
                    raise _Malformed("dangling backslash")
                self.pos += 1
            out.append(char)

    def next_kind(self) -> str:
        """Look ahead without moving: ``param``, ``token68`` or ``other``.

        ``name = value`` is a param; ``abc==`` ending the element is a token68 with padding
        (so ``Basic abc=`` is not a param with an empty value); anything else, such as the
        next challenge's scheme, is ``other``.
        """
        saved = self.pos
        try:
            name = self.read_while(_TCHAR)
            self.skip(_SPACE)
            if name and self.peek() == "=":
                self.pos += 1
                self.skip(_SPACE)
                if not self.at_element_end() and self.peek() != "=":
                    return "param"
            self.pos = saved
            if not self.read_while(_TOKEN68):
                return "other"
            self.skip("=")
            self.skip(_SPACE)
            return "token68" if self.at_element_end() else "other"
        finally:
            self.pos = saved


def _read_param(scanner: _Scanner) -> tuple[str, str]:
    """Read ``token BWS "=" BWS ( token / quoted-string )``; next_kind said it is there."""
    name = scanner.read_while(_TCHAR)
    scanner.skip(_SPACE)
    scanner.pos += 1  # the "="
    scanner.skip(_SPACE)
    if scanner.peek() == '"':
        value = scanner.read_quoted()
    else:
        value = scanner.read_while(_TCHAR)
        if not value:
            raise _Malformed("auth-param value is neither a token nor a quoted-string")
    scanner.skip(_SPACE)
    if not scanner.at_element_end():
        raise _Malformed("expected ',' after an auth-param")
    return name.lower(), value


def _read_params(scanner: _Scanner, params: list[tuple[str, str]]) -> None:
    """Read auth-params into ``params`` until the list ends or the next challenge starts."""
    while True:
        params.append(_read_param(scanner))
        scanner.skip(_SPACE + ",")  # RFC 7230 lists may hold empty elements
        if scanner.at_end() or scanner.next_kind() != "param":
            return


def _read_token68(scanner: _Scanner) -> str:
    value = scanner.read_while(_TOKEN68)
    start = scanner.pos
    scanner.skip("=")
    value += scanner.text[start:scanner.pos]
    scanner.skip(_SPACE)
    return value


def _read_challenge(scanner: _Scanner, found: list[Challenge]) -> None:
    """Read one challenge into ``found``.

    A challenge damaged after at least one complete param is kept with the params read so
    far (the damage is in its tail); one damaged earlier is dropped. Either way the
    :class:`_Malformed` propagates and reading stops.
    """
    scheme = scanner.read_while(_TCHAR).lower()
    if not scheme or scanner.peek() not in ("", ",", *_SPACE):
        raise _Malformed("expected an auth-scheme")
    scanner.skip(_SPACE)
    kind = "end" if scanner.at_element_end() else scanner.next_kind()
    if kind == "other":
        raise _Malformed("neither a token68 nor auth-params after the scheme")
    if kind == "token68":
        found.append(Challenge(scheme, (), _read_token68(scanner)))
        return
    params: list[tuple[str, str]] = []
    try:
        if kind == "param":
            _read_params(scanner, params)
    except _Malformed:
        if params:
            found.append(Challenge(scheme, tuple(params)))
        raise
    found.append(Challenge(scheme, tuple(params)))


def parse_www_authenticate(value: str) -> tuple[Challenge, ...]:
    """Parse a ``WWW-Authenticate`` value into its challenges, in order; never raises.

    Scheme and parameter names come back lower-case; quoted values are unescaped. Reading
    stops at the first malformed element, keeping what was complete before it.
    """
    if not isinstance(value, str):
        return ()
    scanner = _Scanner(value)
    found: list[Challenge] = []
    try:
        while True:
            scanner.skip(_SPACE + ",")
            if scanner.at_end():
                break
            _read_challenge(scanner, found)
    except _Malformed:
        pass
    return tuple(found)
