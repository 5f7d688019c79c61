"""The HTTP client under the transport: keep-alive, stale connections, bodies that end
early, proxies from the environment, TLS verification."""
from __future__ import annotations

import base64
import threading

import pytest

from fixtures.netfaults import ScriptedServer, reply, tunnel
from puller.errors import NetworkError, TLSError
from puller.transport.http import Client


def _peers(srv: ScriptedServer, body: bytes = b"hello") -> list[int]:
    """Route /x to ``body`` and record the client port of each request: one port, one connection."""
    ports: list[int] = []

    def x(h, s):
        ports.append(h.client_address[1])
        reply(h, 200, body)
    srv.routes[("GET", "/x")] = x
    return ports


def test_connections_are_kept_alive_and_reused():
    with ScriptedServer() as srv:
        ports = _peers(srv)
        c = Client()
        for _ in range(5):
            r = c.request("GET", f"{srv.url}/x")
            assert r.status_code == 200 and r.read() == b"hello"
        assert len(ports) == 5 and len(set(ports)) == 1


def test_a_short_unread_body_is_drained_and_the_connection_kept():
    with ScriptedServer() as srv:
        ports = _peers(srv, b"e" * 1000)
        c = Client()
        c.request("GET", f"{srv.url}/x").close()
        c.request("GET", f"{srv.url}/x").close()
        assert len(set(ports)) == 1


def test_a_large_unread_body_drops_the_connection():
    with ScriptedServer() as srv:
        ports = _peers(srv, b"e" * 1_000_000)
        c = Client()
        r = c.request("GET", f"{srv.url}/x")
        r.read(10)
        r.close()
        assert c.request("GET", f"{srv.url}/x").read() == b"e" * 1_000_000
        assert len(set(ports)) == 2


def test_a_connection_the_server_closed_while_idle_is_replaced():
    with ScriptedServer() as srv:
        ports: list[int] = []

        def x(h, s):
            ports.append(h.client_address[1])
            reply(h, 200, b"ok")
            h.close_connection = True  # hang up without saying "Connection: close"
        srv.routes[("GET", "/x")] = x
        c = Client()
        assert c.request("GET", f"{srv.url}/x").read() == b"ok"
        assert c.request("GET", f"{srv.url}/x").read() == b"ok"
        assert len(set(ports)) == 2


def test_threads_share_the_client():
    with ScriptedServer() as srv:
        _peers(srv, b"z" * 100_000)
        c = Client()
        got: list[bytes] = []

        def work():
            for _ in range(5):
                got.append(b"".join(c.request("GET", f"{srv.url}/x").iter_content(4096)))
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got == [b"z" * 100_000] * 20


def test_a_body_shorter_than_its_content_length_is_an_error():
    with ScriptedServer() as srv:
        def short(h, s):
            h.send_response(200)
            h.send_header("Content-Length", "1000")
            h.end_headers()
            h.wfile.write(b"x" * 10)
            h.close_connection = True
        srv.routes[("GET", "/x")] = short
        with pytest.raises(NetworkError, match="closed the connection early"):
            list(Client().request("GET", f"{srv.url}/x").iter_content())
        with pytest.raises(NetworkError, match="closed the connection early"):
            Client().request("GET", f"{srv.url}/x").read()


def test_head_has_no_body_and_keeps_the_connection():
    with ScriptedServer() as srv:
        ports: list[int] = []

        def head(h, s):
            ports.append(h.client_address[1])
            reply(h, 200, b"", {"Content-Length": "12345", "Docker-Content-Digest": "sha256:abc"})
        srv.routes[("HEAD", "/x")] = head
        c = Client()
        r = c.request("HEAD", f"{srv.url}/x")
        assert r.headers["docker-content-digest"] == "sha256:abc" and r.read() == b""
        c.request("HEAD", f"{srv.url}/x")
        assert len(set(ports)) == 1


def test_connection_refused_and_unknown_host_are_one_line_errors():
    with ScriptedServer() as srv:
        port = srv.port
    with pytest.raises(NetworkError, match="cannot connect to 127.0.0.1:.*refused"):
        Client().request("GET", f"http://127.0.0.1:{port}/v2/")
    with pytest.raises(NetworkError, match="unknown host"):
        Client().request("GET", "http://no-such-host.invalid/v2/")
    with pytest.raises(NetworkError, match="invalid URL"):
        Client().request("GET", "ftp://example.org/")


def test_tls_is_verified_unless_turned_off():
    with ScriptedServer(tls=True) as srv:
        srv.routes[("GET", "/x")] = lambda h, s: reply(h, 200, b"secret")
        with pytest.raises(TLSError, match="TLS verification failed for 127.0.0.1"):
            Client().request("GET", f"{srv.url}/x")
        assert Client().request("GET", f"{srv.url}/x", verify=False).read() == b"secret"


def test_plain_http_goes_through_the_environments_proxy(monkeypatch):
    with ScriptedServer() as proxy:
        proxy.routes[("GET", "http://registry.test/")] = lambda h, s: reply(h, 200, b"via proxy")
        monkeypatch.setenv("HTTP_PROXY", f"http://bob:pa%40ss@{proxy.host}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        r = Client().request("GET", "http://registry.test/v2/")
        assert r.read() == b"via proxy"
        (seen,) = proxy.seen
        assert seen.path == "http://registry.test/v2/"  # the absolute URI, as proxies want
        assert seen.headers["Proxy-Authorization"] == "Basic " + base64.b64encode(b"bob:pa@ss").decode()


def test_https_is_tunnelled_through_the_proxy(monkeypatch):
    with ScriptedServer(tls=True) as srv, ScriptedServer() as proxy:
        srv.routes[("GET", "/v2/")] = lambda h, s: reply(h, 200, b"tunnelled")
        proxy.routes[("CONNECT", "")] = tunnel({"registry.test": srv.port})
        monkeypatch.setenv("HTTPS_PROXY", f"http://{proxy.host}")
        r = Client().request("GET", "https://registry.test:443/v2/", verify=False)
        assert r.read() == b"tunnelled"
        assert [x.path for x in proxy.seen] == ["registry.test:443"]
        assert [x.path for x in srv.seen] == ["/v2/"]


def test_no_proxy_and_loopback_bypass_the_proxy(monkeypatch):
    with ScriptedServer() as srv, ScriptedServer() as proxy:
        srv.routes[("GET", "/x")] = lambda h, s: reply(h, 200, b"direct")
        proxy.routes[("GET", "")] = lambda h, s: reply(h, 200, b"via proxy")
        monkeypatch.setenv("HTTP_PROXY", f"http://{proxy.host}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        assert Client().request("GET", f"{srv.url}/x").read() == b"direct"  # loopback: never proxied
        monkeypatch.setenv("NO_PROXY", "registry.test,.internal")
        with pytest.raises(NetworkError, match="unknown host|cannot connect"):
            Client().request("GET", "http://mirror.internal/x")  # bypassed: a direct (failing) lookup
        assert proxy.seen == []


def _certs_d(tmp_path, srv: ScriptedServer, files: dict[str, bytes]):
    d = tmp_path / "certs.d" / srv.host
    d.mkdir(parents=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    return tmp_path / "certs.d"


def test_a_registrys_ca_in_certs_d_is_trusted(tmp_path, monkeypatch):
    with ScriptedServer(tls=True) as srv:
        srv.routes[("GET", "/x")] = lambda h, s: reply(h, 200, b"trusted")
        with pytest.raises(TLSError, match=r"certs\.d/127\.0\.0\.1:\d+/ca\.crt"):
            Client().request("GET", f"{srv.url}/x")
        monkeypatch.setenv("PULLER_CERTS_DIR", str(_certs_d(tmp_path, srv, {"ca.crt": srv.cert_pem})))
        assert Client().request("GET", f"{srv.url}/x").read() == b"trusted"


def test_a_client_certificate_in_certs_d_is_presented(tmp_path, monkeypatch):
    from fixtures.netfaults import self_signed
    cert, key = self_signed("puller-client")
    with ScriptedServer(tls=True, client_ca=cert) as srv:
        srv.routes[("GET", "/x")] = lambda h, s: reply(h, 200, b"hello client")
        monkeypatch.setenv("PULLER_CERTS_DIR", str(_certs_d(tmp_path, srv, {"ca.crt": srv.cert_pem})))
        with pytest.raises(NetworkError):  # no client certificate: the server hangs up
            Client().request("GET", f"{srv.url}/x").read()
        d = tmp_path / "certs.d" / srv.host
        (d / "client.cert").write_bytes(cert)
        with pytest.raises(TLSError, match="has no client.key beside it"):
            Client().request("GET", f"{srv.url}/x")
        (d / "client.key").write_bytes(key)
        assert Client().request("GET", f"{srv.url}/x").read() == b"hello client"


def test_chunked_bodies_are_read_whole_and_the_connection_kept():
    with ScriptedServer() as srv:
        ports: list[int] = []

        def chunked(h, s):
            ports.append(h.client_address[1])
            h.send_response(200)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            for part in (b"a" * 70_000, b"b" * 10, b"c" * 300_000):
                h.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            h.wfile.write(b"0\r\n\r\n")
        srv.routes[("GET", "/x")] = chunked
        c = Client()
        want = b"a" * 70_000 + b"b" * 10 + b"c" * 300_000
        assert b"".join(c.request("GET", f"{srv.url}/x").iter_content(65536)) == want
        assert c.request("GET", f"{srv.url}/x").read() == want
        c.request("GET", f"{srv.url}/x").close()  # unread: more than is worth draining
        assert c.request("GET", f"{srv.url}/x").read() == want
        assert len(set(ports)) == 2  # kept after the reads, dropped after the unread close
