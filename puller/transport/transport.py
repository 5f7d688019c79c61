"""HTTP to one registry host: scheme choice, auth handshake, retries, safe redirects.

The handshake, in order (as go-containerregistry's transport does it):

1. ``GET /v2/`` (the ping) once per host and process: 200 means no auth; 401 carries the
   challenge (``WWW-Authenticate``: Bearer with realm + service, or Basic).
2. Bearer: ask the realm for a token for the *repository scope this request needs*
   (``repository:NAME:pull``), anonymously or with the user's credentials; tokens are kept
   per scope and refreshed shortly before ``expires_in`` runs out; a 401 in the middle of a
   pull re-fetches the token once.
3. Basic: send the user's credentials with every request to this host only.

Redirects are followed by hand so that ``Authorization`` is dropped whenever the origin
(scheme, host, port) changes, e.g. on the way to a CDN, and an https -> http redirect is
refused. Retries: connection errors, timeouts, 5xx, 408 and 429 (honouring Retry-After),
with exponential backoff and jitter, bounded in count and total time.
"""
from __future__ import annotations

import base64
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urljoin, urlsplit

from ..errors import (AuthError, NetworkError, NotFound, RateLimited, RegistryError, TLSError)
from ..reference import is_loopback_host
from .http import Client, Response
from .memo import AuthMemo

TYPE_CHECKING = False  # typing costs more to import than this module: names for checkers only
if TYPE_CHECKING:
    from email.message import Message
    from typing import Any

__all__ = ["Transport", "RetryPolicy", "RateLimit", "USER_AGENT"]

USER_AGENT = "puller/0.1 (+https://github.com/puller)"
_MAX_REDIRECTS = 10
_MAX_ERROR_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: ``retries`` extra attempts, backoff from ``delay`` seconds, doubling,
    with jitter, never past ``max_total`` seconds in all; ``stall`` is the read timeout that
    declares a transfer stalled."""

    retries: int = 4
    delay: float = 0.5
    max_delay: float = 30.0
    max_total: float = 300.0
    connect_timeout: float = 10.0
    stall: float = 30.0

    def backoff(self, attempt: int) -> float:
        base = min(self.max_delay, self.delay * (2 ** attempt))
        return base * (0.5 + random.random() / 2)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Docker Hub's pull quota as its manifest responses report it."""

    limit: int | None
    remaining: int | None
    window: int | None
    source: str | None

    @classmethod
    def from_headers(cls, headers: "Mapping[str, str] | Message") -> "RateLimit | None":
        lim, rem = headers.get("ratelimit-limit"), headers.get("ratelimit-remaining")
        if lim is None and rem is None:
            return None

        def num(v: str | None) -> tuple[int | None, int | None]:
            if not v:
                return None, None
            head, _, w = v.partition(";")
            try:
                n = int(head.strip())
            except ValueError:
                n = None
            window = None
            if w.strip().startswith("w="):
                try:
                    window = int(w.strip()[2:])
                except ValueError:
                    pass
            return n, window

        l, w1 = num(lim)
        r, w2 = num(rem)
        return cls(l, r, w1 or w2, headers.get("docker-ratelimit-source"))

    def to_json(self) -> dict:
        return {"limit": self.limit, "remaining": self.remaining, "window_seconds": self.window,
                "source": self.source}


@dataclass
class _Token:
    value: str
    expires: float


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils  # only for the HTTP-date form
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _origin(url: str) -> tuple[str, str, int]:
    u = urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    return u.scheme, (u.hostname or "").lower(), port


def error_codes(resp: Response) -> tuple[tuple[str, ...], str]:
    """The registry's error codes and first message, from a capped read of the body."""
    try:
        body = resp.read(_MAX_ERROR_BODY)
    except NetworkError:  # a broken error body must not hide the status
        body = b""
    try:
        import json
        doc = json.loads(body)
        errs = doc.get("errors") or []
        codes = tuple(str(e.get("code", "")) for e in errs if isinstance(e, dict))
        msg = next((str(e.get("message")) for e in errs if isinstance(e, dict) and e.get("message")), "")
        if not codes and doc.get("details"):
            msg = str(doc["details"])
        return codes, msg
    except Exception:  # noqa: BLE001
        return (), ""


class Transport:
    """Authenticated HTTP to one registry host, shared by every request to it.

    ``host`` is ``host[:port]`` as it appears in URLs (``registry-1.docker.io``); ``plain_http``
    allows falling back to http (loopback registries and --insecure-registry hosts);
    ``insecure_tls`` turns TLS verification off (only when the user says so)."""

    def __init__(self, host: str, *, credentials: Any = None, plain_http: bool = False,
                 insecure_tls: bool = False, retry: RetryPolicy = RetryPolicy(),
                 session: Client | None = None, scheme: str | None = None,
                 on_event: Callable[[dict], None] | None = None, memo: AuthMemo | None = None) -> None:
        self.host = host
        self.credentials = credentials
        self.plain_http = plain_http
        self.retry = retry
        self.session = session or Client()
        self.verify = not insecure_tls
        self._scheme = scheme
        # The memo is used where the scheme cannot have changed since: a fixed one (a
        # mirror's URL) or https only; a loopback or insecure registry is pinged each time.
        self.memo = memo if (scheme is not None or not plain_http) else None
        self._challenge: tuple[str, dict[str, str]] | None = None
        self._pinged = False
        self._tokens: dict[str, _Token] = {}
        self._lock = threading.Lock()
        self.on_event = on_event or (lambda e: None)
        self.last_ratelimit: RateLimit | None = None

    # --- base URL ------------------------------------------------------------------
    @property
    def base(self) -> str:
        self._ensure_pinged()
        return f"{self._scheme}://{self.host}"

    def _ensure_pinged(self) -> None:
        with self._lock:
            if self._pinged:
                return
            if not self._remembered():
                self._ping()
                self._remember()
            self._pinged = True

    def _remember(self) -> None:
        """Write the scheme and challenge learnt down in the memo, for the next process."""
        if self.memo is not None:
            self.memo.save_ping(self.host, self._scheme or "https", self._challenge)

    def _remembered(self) -> bool:
        """Take the ping's answer (and anonymous tokens) from the memo, if it has them."""
        if self.memo is None:
            return False
        got = self.memo.recall(self.host)
        if got is None or (self._scheme is not None and got[0] != self._scheme):
            return False
        self._scheme, self._challenge, tokens = got
        if self.credentials is None and self._challenge is not None and self._challenge[0] == "bearer":
            self._tokens = {scope: _Token(v, exp) for scope, (v, exp) in tokens.items()}
        return True

    def _ping(self) -> None:
        """The ping, retried like any request: connection errors, timeouts, 5xx, 408, 429
        (a TLS failure is final)."""
        deadline = time.monotonic() + self.retry.max_total
        for attempt in range(self.retry.retries + 1):
            try:
                return self._ping_once()
            except TLSError:
                raise
            except (NetworkError, RegistryError) as e:
                if isinstance(e, RegistryError) and not e.retryable:
                    raise
                delay = self.retry.backoff(attempt)
                if attempt >= self.retry.retries or time.monotonic() + delay > deadline:
                    raise
                self.on_event({"event": "retry", "host": self.host, "attempt": attempt + 1,
                               "reason": str(e), "delay": round(delay, 2)})
                time.sleep(delay)

    def _ping_once(self) -> None:
        """Find the scheme and the auth challenge with ``GET /v2/``."""
        if self._scheme:
            schemes = [self._scheme]
        elif self.plain_http and is_loopback_host(self.host):
            schemes = ["http", "https"]  # a local registry: skip a doomed TLS handshake
        else:
            schemes = ["https", "http"] if self.plain_http else ["https"]
        last: Exception | None = None
        for i, scheme in enumerate(schemes):
            try:
                resp = self._send("GET", f"{scheme}://{self.host}/v2/", {})
            except (TLSError, NetworkError) as e:
                last = e
                continue
            if scheme == "http" and resp.status_code == 400 and i + 1 < len(schemes):
                last = NetworkError(f"{self.host} speaks TLS")  # "HTTP request to an HTTPS server"
                resp.close()
                continue
            self._scheme = scheme
            if resp.status_code == 401:
                self._challenge = self._pick_challenge(resp)
            elif resp.status_code >= 500 or resp.status_code in (429, 408):
                raise RegistryError(f"registry {self.host} answered {resp.status_code} to /v2/",
                                    status=resp.status_code)
            resp.close()
            return
        assert last is not None
        raise last

    @staticmethod
    def _pick_challenge(resp: Response) -> tuple[str, dict[str, str]] | None:
        from .challenge import parse_www_authenticate  # only registries that want auth need it
        chals = parse_www_authenticate(resp.headers.get("WWW-Authenticate", ""))
        for scheme in ("bearer", "basic"):
            for c in chals:
                if c.scheme == scheme:
                    return scheme, {k: v for k, v in c.params}
        return None

    # --- auth ----------------------------------------------------------------------
    def _basic_header(self) -> str | None:
        c = self.credentials
        if c is None or not c.username or c.password is None:
            return None
        return "Basic " + base64.b64encode(f"{c.username}:{c.password}".encode()).decode()

    def _auth_header(self, scope: str | None, *, force_new: bool = False) -> str | None:
        if self._challenge is None:
            return None
        scheme, params = self._challenge
        if scheme == "basic":
            return self._basic_header()
        key = scope or ""
        with self._lock:
            tok = self._tokens.get(key)
            if tok and not force_new and time.time() < tok.expires:
                return "Bearer " + tok.value
            tok = self._fetch_token(params, scope)
            self._tokens[key] = tok
            return "Bearer " + tok.value

    def _token_answer(self, params: dict[str, str], scope: str | None,
                      extra: dict[str, str] | None = None) -> dict:
        """The token server's JSON answer for ``scope`` (plus ``extra`` query fields), asked
        with this transport's credentials: an identity token by the OAuth2 POST, else a GET
        with Basic auth (or none, anonymously)."""
        realm = params.get("realm")
        if not realm:
            raise AuthError(f"registry {self.host} asked for a bearer token but named no realm")
        if urlsplit(realm).scheme not in ("https", "http"):
            raise AuthError(f"registry {self.host} named an invalid token realm {realm!r}")
        query: dict[str, str] = {}
        if params.get("service"):
            query["service"] = params["service"]
        if scope:
            query["scope"] = scope
        query.update(extra or {})
        c = self.credentials
        headers = {"User-Agent": USER_AGENT}
        if c is not None and getattr(c, "identity_token", None):
            form = dict(query, grant_type="refresh_token", refresh_token=c.identity_token,
                        client_id="puller")
            resp = self._token_request("POST", realm, headers, data=form)
        else:
            if c is not None and c.username and c.password is not None:
                headers["Authorization"] = self._basic_header() or ""
            url = realm + ("&" if "?" in realm else "?") + urlencode(query)
            resp = self._token_request("GET", url, headers)
        if resp.status_code in (401, 403):
            resp.close()
            if c is not None:
                raise AuthError(f"{self.host}: the credentials were refused by {urlsplit(realm).hostname}",
                                status=resp.status_code)
            raise AuthError(f"{self.host}: anonymous access was refused by the token server",
                            status=resp.status_code)
        if resp.status_code != 200:
            resp.close()
            raise RegistryError(f"token server {urlsplit(realm).hostname} answered {resp.status_code}",
                                status=resp.status_code)
        try:
            doc = resp.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise AuthError(f"token server {urlsplit(realm).hostname} sent no JSON")
        return doc

    def _fetch_token(self, params: dict[str, str], scope: str | None) -> _Token:
        started = time.time()
        doc = self._token_answer(params, scope)
        value = doc.get("token") or doc.get("access_token")
        if not value:
            raise AuthError(f"token server {urlsplit(params['realm']).hostname} sent no token")
        try:
            expires_in = int(doc.get("expires_in") or 60)
        except (TypeError, ValueError):
            expires_in = 60
        issued = _parse_time(doc.get("issued_at")) or started
        # Refresh early: at 90% of the lifetime, and never trust a token past its end.
        expires = issued + max(1.0, expires_in * 0.9 - 1)
        self.on_event({"event": "token", "host": self.host, "scope": scope, "expires_in": expires_in})
        if self.memo is not None and self.credentials is None:  # only anonymous tokens are written down
            self.memo.save_token(self.host, scope or "", str(value), expires)
        return _Token(str(value), expires)

    def login(self) -> str | None:
        """Check the credentials with the registry, as ``docker login`` does, and return the
        identity (refresh) token its token server gives for them, if it gives one: then the
        password need not be stored at all."""
        self._ensure_pinged()
        challenge = self._challenge
        refused = f"login to {self.host} failed: credentials refused"
        if challenge is None or challenge[0] != "bearer" or not self._basic_header():
            resp = self.request("GET", "/v2/")
            resp.close()
            if resp.status_code in (401, 403):
                raise AuthError(refused, status=resp.status_code)
            return None
        try:
            doc = self._token_answer(challenge[1], None, {"offline_token": "true", "client_id": "puller"})
        except AuthError as e:
            if e.status in (401, 403):
                raise AuthError(refused, status=e.status) from None
            raise
        token = doc.get("refresh_token")
        return token if isinstance(token, str) and token else None

    def _token_request(self, method: str, url: str, headers: dict, data: dict | None = None):
        if urlsplit(url).scheme == "http" and not self.plain_http:
            raise AuthError(f"refusing to send credentials to plain-http token realm {url}")
        body = None
        if data is not None:
            body = urlencode(data).encode()
            headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
        return self._with_retries(lambda: self._send(method, url, headers, data=body))

    # --- sending -------------------------------------------------------------------
    def _send(self, method: str, url: str, headers: Mapping[str, str], *,
              data: Any = None) -> Response:
        return self.session.request(method, url, headers=headers, body=data, verify=self.verify,
                                    timeout=(self.retry.connect_timeout, self.retry.stall))

    def _with_retries(self, attempt_fn: Callable[[], Response]) -> Response:
        deadline = time.monotonic() + self.retry.max_total
        attempt = 0
        while True:
            try:
                resp = attempt_fn()
                status = resp.status_code
                if not (status >= 500 or status in (408, 429)) or attempt >= self.retry.retries:
                    return resp
                wait = parse_retry_after(resp.headers.get("Retry-After")) if status == 429 else None
                if status == 429 and wait is not None and wait > self.retry.max_delay * 4:
                    return resp  # the quota resets far in the future: report it now
                resp.close()
                reason: str = f"HTTP {status}"
            except NetworkError as e:
                if attempt >= self.retry.retries or isinstance(e, TLSError):
                    raise
                wait, reason = None, str(e)
            delay = wait if wait is not None else self.retry.backoff(attempt)
            if time.monotonic() + delay > deadline:
                delay = max(0.0, deadline - time.monotonic())
                if delay <= 0:
                    raise NetworkError(f"{self.host}: gave up after {attempt + 1} attempts ({reason})")
            self.on_event({"event": "retry", "host": self.host, "attempt": attempt + 1,
                           "reason": reason, "delay": round(delay, 2)})
            time.sleep(delay)
            attempt += 1

    def request(self, method: str, path: str, *, scope: str | None = None,
                headers: Mapping[str, str] | None = None, data: Any = None,
                retry: bool = True) -> Response:
        """One request to ``path`` (``/v2/...`` or an absolute URL of this host), with auth,
        retries and redirects handled. The body is read on demand: the caller reads it to
        its end or closes the response."""
        url = path if "://" in path else self.base + path
        hdrs = {"User-Agent": USER_AGENT, **(headers or {})}

        def once(force_new: bool = False) -> Response:
            auth = self._auth_header(scope, force_new=force_new)
            return self._follow(method, url, hdrs, auth, data=data)

        run = (lambda fn: self._with_retries(fn)) if retry else (lambda fn: fn())
        resp = run(once)
        if resp.status_code == 401:
            fresh = self._pick_challenge(resp)
            if fresh is not None and not _same_authority(fresh, self._challenge):
                # None at ping time (or a remembered one gone stale): learn this one now.
                with self._lock:
                    self._challenge, self._tokens = fresh, {}
                self._remember()
                resp.close()
                resp = run(once)
            elif self._challenge is not None and self._challenge[0] == "bearer":
                resp.close()  # the token may have expired early: fetch a new one, once
                resp = run(lambda: once(force_new=True))
        rl = RateLimit.from_headers(resp.headers)
        if rl is not None:
            self.last_ratelimit = rl
            self.on_event({"event": "ratelimit", "host": self.host, **rl.to_json()})
        return resp

    def _follow(self, method: str, url: str, headers: dict, auth: str | None, *,
                data: Any) -> Response:
        """Send, following redirects by hand: Authorization only to the original origin."""
        origin = _origin(url)
        seen = 0
        while True:
            h = dict(headers)
            if auth and _origin(url) == origin:
                h["Authorization"] = auth
            resp = self._send(method, url, h, data=data)
            if resp.status_code not in (301, 302, 303, 307, 308) or "Location" not in resp.headers:
                return resp
            seen += 1
            if seen > _MAX_REDIRECTS:
                resp.close()
                raise NetworkError(f"too many redirects fetching {urlsplit(url).path}")
            nxt = urljoin(url, resp.headers["Location"])
            resp.close()
            if urlsplit(url).scheme == "https" and urlsplit(nxt).scheme != "https":
                raise NetworkError(f"refusing redirect from https to {urlsplit(nxt).scheme}: "
                                   f"{urlsplit(nxt).netloc}")
            if urlsplit(nxt).scheme not in ("http", "https"):
                raise NetworkError(f"refusing redirect to {nxt}")
            if resp.status_code == 303 or (resp.status_code in (301, 302) and method == "POST"):
                method, data = ("GET" if method != "HEAD" else "HEAD"), None
            url = nxt

    # --- errors --------------------------------------------------------------------
    def raise_for(self, resp: Response, what: str, *, docker_hub: bool = False) -> None:
        """Turn an error response into our exception, with the registry's own words."""
        status = resp.status_code
        codes, msg = error_codes(resp) if resp.method != "HEAD" else ((), "")
        resp.close()
        detail = f": {msg}" if msg else ""
        if status == 404 or "MANIFEST_UNKNOWN" in codes or "NAME_UNKNOWN" in codes or "BLOB_UNKNOWN" in codes:
            raise NotFound(f"{what}: not found{detail}", status=status, codes=codes)
        if status == 401:
            if self.credentials is None:
                raise NotFound(f"{what}: not found or requires authentication (try 'puller login {self.host}')",
                               status=status, codes=codes)
            raise AuthError(f"{what}: not found, or access denied with the given credentials{detail}",
                            status=status, codes=codes)
        if status == 403:
            raise AuthError(f"{what}: access denied{detail}", status=status, codes=codes)
        if status == 429 or "TOOMANYREQUESTS" in codes:
            wait = parse_retry_after(resp.headers.get("Retry-After"))
            rl = RateLimit.from_headers(resp.headers)
            when = f"; it resets in about {_human_seconds(wait)}" if wait else (
                f"; the window is {_human_seconds(rl.window)}" if rl and rl.window else "")
            login = " Logging in ('puller login') raises the limit." if docker_hub else ""
            raise RateLimited(f"{what}: the registry's pull rate limit was reached{when}.{login}",
                              status=status, codes=codes, retry_after=wait)
        raise RegistryError(f"{what}: registry answered HTTP {status}{detail}", status=status, codes=codes)


def _same_authority(a: tuple[str, dict[str, str]] | None, b: tuple[str, dict[str, str]] | None) -> bool:
    """Whether two challenges name the same scheme, realm and service (a 401 for one
    resource adds its own ``scope`` and ``error``, which do not count)."""
    if a is None or b is None:
        return a is b
    return a[0] == b[0] and all(a[1].get(k) == b[1].get(k) for k in ("realm", "service"))


def _human_seconds(s: float | int | None) -> str:
    s = int(s or 0)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    if s >= 60:
        return f"{s // 60} min {s % 60} s"
    return f"{s} s"


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    import datetime as _dt
    try:
        v = value.replace("Z", "+00:00")
        if "." in v:  # fractional seconds with more digits than Python accepts
            head, _, rest = v.partition(".")
            frac = "".join(ch for ch in rest if ch.isdigit())
            tz = rest[len(frac):]
            v = f"{head}.{frac[:6]}{tz}"
        t = _dt.datetime.fromisoformat(v)
        if t.tzinfo is None:
            t = t.replace(tzinfo=_dt.timezone.utc)
        return t.timestamp()
    except ValueError:
        return None
