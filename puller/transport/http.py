"""HTTP/1.1 for the registry client, on the standard library's ``http.client``.

Why not requests: importing it costs about 70 ms here, half of a warm pull's whole budget
and more than the rest of a cold pull's start-up. The registry protocol needs little of
what it brings: :mod:`.transport` follows redirects by hand (to drop ``Authorization``
across origins), retries on its own policy and does its own auth; cookies, ``.netrc`` and
content decoding are things a registry client must *not* do. What is left is here, and
small: keep-alive connections per origin shared by the download threads, TLS verified
against the system's trust store (as Docker and skopeo do), the environment's proxies,
separate connect and read timeouts, and every failure turned into our own error.
"""
from __future__ import annotations

import http.client
import os
import select
import socket
import ssl
import threading
from base64 import b64encode
from collections.abc import Iterator, Mapping
from urllib.parse import unquote, urlsplit

from ..errors import NetworkError, TLSError

TYPE_CHECKING = False  # typing costs an import on the pull path; only checkers need it
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Client", "Response"]

_BLOCK = 256 * 1024        # socket reads and body sends
_DRAIN = 64 * 1024         # an unread body up to this size is read to keep the connection
_MAX_IDLE = 16             # idle connections kept per origin
# Where distributions keep their CA bundle, as Go's crypto/x509 looks for it: used when
# OpenSSL's compiled-in default finds nothing (a Python built against another prefix).
_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
               "/etc/ssl/ca-bundle.pem", "/etc/pki/tls/cacert.pem",
               "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", "/etc/ssl/cert.pem")

_CERTS_BASES = ("~/.config/containers/certs.d", "/etc/containers/certs.d", "/etc/docker/certs.d")

_Key = tuple[str, str, int, bool, "tuple[str, int] | None"]


class Response:
    """One answer: status and headers at once, the body read on demand.

    Reading the body to its end (or closing it) hands the connection back for the next
    request to the same origin; a body left half-read closes it instead."""

    def __init__(self, client: "Client", key: _Key, conn: http.client.HTTPConnection,
                 raw: http.client.HTTPResponse, method: str, url: str, read_timeout: float) -> None:
        self._client, self._key, self._conn, self._raw = client, key, conn, raw
        self.method, self.url = method, url
        self.status_code: int = raw.status
        self.reason: str = raw.reason
        self.headers = raw.headers  # case-insensitive lookups, as HTTP wants
        self._read_timeout = read_timeout
        self._done = False
        if raw.length == 0 or raw.isclosed():  # HEAD, 204, 304, Content-Length: 0
            self._finish()

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes of the body (all of it for -1); fewer only at its end."""
        if self._done:
            return b""
        data = self._guard(self._raw.read, None if n < 0 else n)
        if self._raw.isclosed() or self._raw.length == 0:
            self._finish()
        return data

    def iter_content(self, size: int = _BLOCK) -> Iterator[bytes]:
        """The body in pieces of at most ``size`` bytes, as they arrive: one socket read
        each, no extra copy; a body that ends short of its Content-Length is an error."""
        raw = self._raw
        while not self._done:
            chunk = self._guard(raw.read1, size)
            if not chunk:
                if raw.length:  # http.client's read1 does not check this itself
                    self._abandon()
                    raise NetworkError(f"{self._netloc} closed the connection early "
                                       f"({raw.length} bytes short)")
                self._finish()
                return
            yield chunk
            if raw.length == 0:
                self._finish()

    def _guard(self, fn, n):
        """``fn(n)`` with the failures of a body read turned into our error."""
        try:
            return fn(n)
        except (socket.timeout, TimeoutError):
            self._abandon()
            raise NetworkError(f"{self._netloc} stopped answering (no data for "
                               f"{self._read_timeout:g} s)") from None
        except http.client.IncompleteRead as e:
            self._abandon()
            raise NetworkError(f"{self._netloc} closed the connection early "
                               f"({e.expected} bytes short)") from None
        except (OSError, http.client.HTTPException) as e:
            self._abandon()
            raise NetworkError(f"connection to {self._netloc} broke: {_reason(e)}") from None

    @property
    def content(self) -> bytes:
        return self.read()

    def json(self):
        import json
        return json.loads(self.read())

    def close(self) -> None:
        """Done with this answer: drain a short rest to keep the connection, else drop it."""
        if self._done:
            return
        raw = self._raw
        if raw.length is not None and raw.length <= _DRAIN or raw.chunked:
            try:
                raw.read(_DRAIN + 1 if raw.chunked else raw.length)
            except (OSError, http.client.HTTPException):
                pass
            if raw.isclosed() or raw.length == 0:
                self._finish()
                return
        self._abandon()

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def _netloc(self) -> str:
        return urlsplit(self.url).netloc

    def _finish(self) -> None:
        self._raw.close()  # the body is all read: the connection may carry the next request
        self._release()

    def _release(self) -> None:
        self._done = True
        if self._raw.will_close:
            self._conn.close()
        else:
            self._client._put(self._key, self._conn)

    def _abandon(self) -> None:
        self._done = True
        self._raw.close()
        self._conn.close()


class Client:
    """Connections to many origins, shared by threads: each request borrows an idle
    connection to its origin (or opens one) and gives it back when its body is read."""

    def __init__(self) -> None:
        self._idle: dict[_Key, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._contexts: dict[tuple[bool, str | None], ssl.SSLContext] = {}

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                body: Any = None, timeout: tuple[float, float] = (10.0, 30.0),
                verify: bool = True) -> Response:
        """Send one request and return once the status line and headers are in.

        A connection that sat idle may have been closed by the server meanwhile: the
        request is sent again once on a fresh one, when its body can be sent again."""
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise NetworkError(f"invalid URL {url}")
        try:
            port = u.port or (443 if u.scheme == "https" else 80)
        except ValueError:
            raise NetworkError(f"invalid URL {url}") from None
        host = u.hostname
        proxy = _proxy_for(u.scheme, host, port)
        key: _Key = (u.scheme, host, port, verify, proxy[0] if proxy else None)
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        hdrs = dict(headers or {})
        if proxy and u.scheme == "http":
            target = url.split("#", 1)[0]  # a plain-http proxy wants the absolute URI
            if proxy[1]:
                hdrs["Proxy-Authorization"] = proxy[1]
        rewindable = body is None or isinstance(body, (bytes, bytearray))
        while True:
            conn, reused = self._get(key, u.scheme, host, port, verify, proxy, timeout)
            try:
                conn.request(method, target, body=body, headers=hdrs)
                raw = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn.close()
                if reused and rewindable:
                    continue
                raise NetworkError(f"connection to {u.netloc} broke: {_reason(e)}") from None
            except BaseException as e:
                conn.close()
                raise _error(e, u.netloc, timeout) from None
            return Response(self, key, conn, raw, method, url, timeout[1])

    def close(self) -> None:
        with self._lock:
            conns = [c for cs in self._idle.values() for c in cs]
            self._idle.clear()
        for c in conns:
            c.close()

    # --- the pool ------------------------------------------------------------------
    def _get(self, key: _Key, scheme: str, host: str, port: int, verify: bool,
             proxy: "tuple[tuple[str, int], str | None] | None",
             timeout: tuple[float, float]) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(key) or []
            while idle:
                conn = idle.pop()
                if not _dropped(conn):
                    conn.sock.settimeout(timeout[1])  # type: ignore[union-attr]
                    return conn, True
                conn.close()
        return self._connect(scheme, host, port, verify, proxy, timeout), False

    def _connect(self, scheme: str, host: str, port: int, verify: bool,
                 proxy: "tuple[tuple[str, int], str | None] | None",
                 timeout: tuple[float, float]) -> http.client.HTTPConnection:
        netloc = f"{host}:{port}"
        at = proxy[0] if proxy else (host, port)
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(*at, timeout=timeout[0], context=self._context(verify, host, port),
                                               blocksize=_BLOCK)
            if proxy:
                conn.set_tunnel(host, port, headers={"Proxy-Authorization": proxy[1]} if proxy[1] else None)
        else:
            conn = http.client.HTTPConnection(*at, timeout=timeout[0], blocksize=_BLOCK)
        try:
            conn.connect()
        except BaseException as e:
            conn.close()
            raise _error(e, netloc, timeout, connecting=True) from None
        conn.sock.settimeout(timeout[1])  # type: ignore[union-attr]  # from here on, the stall bound
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
        return conn

    def _put(self, key: _Key, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < _MAX_IDLE:
                idle.append(conn)
                return
        conn.close()

    def _context(self, verify: bool, host: str, port: int) -> ssl.SSLContext:
        certs = certs_dir(host, port)
        with self._lock:
            ctx = self._contexts.get((verify, certs))
            if ctx is None:
                ctx = self._contexts[(verify, certs)] = _tls_context(verify, certs)
            return ctx


def certs_dir(host: str, port: int) -> str | None:
    """The per-registry TLS directory, as Docker and podman keep them: ``HOST:PORT`` (or
    ``HOST`` for 443) under ``$PULLER_CERTS_DIR``, else ``~/.config/containers/certs.d``,
    ``/etc/containers/certs.d``, ``/etc/docker/certs.d``; the first that exists."""
    env = os.environ.get("PULLER_CERTS_DIR")
    bases = [env] if env else [os.path.expanduser(b) for b in _CERTS_BASES]
    names = [f"{host}:{port}"] + ([host] if port == 443 else [])
    for base in bases:
        for name in names:
            d = os.path.join(base, name)
            if os.path.isdir(d):
                return d
    return None


def _tls_context(verify: bool, certs: str | None) -> ssl.SSLContext:
    """The system's trust store (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` override it, as in
    OpenSSL) plus the registry's own directory: every ``*.crt`` there is a CA to trust,
    every ``*.cert`` a client certificate with its ``*.key`` beside it (Docker's rules).
    With verification off, only the client certificates are used."""
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif not ctx.cert_store_stats().get("x509_ca") and not os.environ.get("SSL_CERT_DIR"):
        for path in _CA_BUNDLES:
            if os.path.isfile(path):
                ctx.load_verify_locations(cafile=path)
                break
    if certs:
        _load_certs_dir(ctx, certs, verify)
    return ctx


def _load_certs_dir(ctx: ssl.SSLContext, certs: str, verify: bool) -> None:
    try:
        names = sorted(os.listdir(certs))
    except OSError as e:
        raise TLSError(f"cannot read {certs}: {e.strerror or e}") from None
    for name in names:
        path = os.path.join(certs, name)
        try:
            if name.endswith(".crt") and verify:
                ctx.load_verify_locations(cafile=path)
            elif name.endswith(".cert"):
                key = path[:-len(".cert")] + ".key"
                if not os.path.exists(key):
                    raise TLSError(f"client certificate {path} has no {os.path.basename(key)} beside it")
                ctx.load_cert_chain(path, key)
        except (ssl.SSLError, OSError) as e:
            why = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
            raise TLSError(f"cannot use {path}: {why}") from None


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """An idle connection the server closed (or wrote to, out of turn) cannot be reused."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        p = select.poll()
        p.register(sock, select.POLLIN)
        return bool(p.poll(0))
    except (OSError, ValueError):
        return True


def _proxy_for(scheme: str, host: str, port: int) -> "tuple[tuple[str, int], str | None] | None":
    """The proxy the environment names for this URL (``HTTPS_PROXY``, ``HTTP_PROXY``,
    ``NO_PROXY``), as (address, Proxy-Authorization); loopback hosts are never proxied,
    as in Go's and so Docker's rules."""
    if not any(k.lower() in ("http_proxy", "https_proxy", "all_proxy") for k in os.environ):
        return None
    from ..reference import is_loopback_host
    if is_loopback_host(host):
        return None
    import urllib.request  # only when a proxy is configured: it is not cheap to import
    proxies = urllib.request.getproxies_environment()
    if urllib.request.proxy_bypass(f"{host}:{port}") or urllib.request.proxy_bypass(host):
        return None  # NO_PROXY (on Linux, proxy_bypass reads the environment)
    url = proxies.get(scheme) or proxies.get("all")
    if not url:
        return None
    p = urlsplit(url if "://" in url else f"http://{url}")
    if p.scheme != "http" or not p.hostname:
        raise NetworkError(f"unsupported proxy {url!r} (only http:// proxies are)")
    auth = None
    if p.username is not None:
        cred = f"{unquote(p.username)}:{unquote(p.password or '')}"
        auth = "Basic " + b64encode(cred.encode()).decode()
    return (p.hostname, p.port or 80), auth


def _error(e: BaseException, netloc: str, timeout: tuple[float, float], *,
           connecting: bool = False) -> BaseException:
    """Our error for a failure while connecting or waiting for the answer."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return TLSError(f"TLS verification failed for {netloc}: {e.verify_message or 'certificate verify failed'} "
                        f"(a private CA goes in /etc/docker/certs.d/{netloc}/ca.crt)")
    if isinstance(e, ssl.SSLError):
        return TLSError(f"TLS handshake with {netloc} failed: {e.reason or e}")
    if isinstance(e, (socket.timeout, TimeoutError)):
        if connecting:
            return NetworkError(f"timed out connecting to {netloc}")
        return NetworkError(f"{netloc} stopped answering (no data for {timeout[1]:g} s)")
    if isinstance(e, OSError):
        return NetworkError(f"cannot connect to {netloc}: {_reason(e)}")
    if isinstance(e, http.client.HTTPException):
        return NetworkError(f"request to {netloc} failed: {_reason(e)}")
    return e


def _reason(e: BaseException) -> str:
    """The human part of a socket or protocol error."""
    if isinstance(e, socket.gaierror):
        if e.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
            return "unknown host"
        if e.errno == socket.EAI_AGAIN:
            return "unknown host (DNS lookup failed)"
        return e.strerror or str(e)
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(e, http.client.BadStatusLine):
        return "the server did not answer in HTTP"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
