"""Byte-exact HTTP/1.1 through the proxy: clients normalise what an attacker would not."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import time
from dataclasses import dataclass

from ports import origin_socket

GOOD_UA = "AcmeBot/1.0 (+https://acme.example/bot)"


def auth(tenant: str = "acme", token: str | None = None) -> str:
    token = token if token is not None else f"{tenant}-secret"
    return "Basic " + base64.b64encode(f"{tenant}:{token}".encode()).decode()


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def read_reply(sock: socket.socket | ssl.SSLSocket, method: str = "GET") -> Reply:
    resp = http.client.HTTPResponse(sock, method=method)  # type: ignore[arg-type]
    resp.begin()
    body = resp.read() if method != "CONNECT" else b""
    return Reply(resp.status, resp.headers, body)


def request_bytes(
    target: str,
    host: str,
    *,
    method: str = "GET",
    ua: str = GOOD_UA,
    proxy_auth: str | None = None,
    extra: dict[str, str] | None = None,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", f"User-Agent: {ua}"]
    if proxy_auth:
        lines.append(f"Proxy-Authorization: {proxy_auth}")
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def send(proxy_port: int, *chunks: bytes, gap: float = 0.0) -> Reply:
    """Send `chunks` as separate writes (TCP_NODELAY) to the proxy; read one reply."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=15) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, chunk in enumerate(chunks):
            if i and gap:
                time.sleep(gap)  # keeps the writes in separate segments; nothing is timed
            sock.sendall(chunk)
        return read_reply(sock)


def connect(
    proxy_port: int, authority: str, *, proxy_auth: str | None = None
) -> tuple[socket.socket, Reply]:
    """Open a CONNECT tunnel; the socket is positioned after the proxy's reply."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=15)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if proxy_auth:
        head += f"Proxy-Authorization: {proxy_auth}\r\n"
    sock.sendall((head + "\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    status = int(buf.split(b" ", 2)[1]) if buf.startswith(b"HTTP/") else 0
    if status != 200:
        reply = _parse_full(buf, sock)
        sock.close()
        return sock, reply
    return sock, Reply(200, http.client.HTTPMessage(), b"")


def _parse_full(buf: bytes, sock: socket.socket) -> Reply:
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    msg = http.client.HTTPMessage()
    for line in lines[1:]:
        k, _, v = line.partition(":")
        msg[k.strip()] = v.strip()
    length = int(msg.get("Content-Length") or 0)
    while len(body) < length:
        data = sock.recv(65536)
        if not data:
            break
        body += data
    return Reply(int(lines[0].split(" ", 2)[1]), msg, body)


def closed_without_reply(sock: socket.socket | ssl.SSLSocket) -> bool:
    """True when the peer closes (or resets) without sending an HTTP response."""
    try:
        data = sock.recv(65536)
    except (ConnectionResetError, ssl.SSLError):
        return True
    except TimeoutError:
        return False
    return data == b""


@dataclass
class Received:
    """One request as an origin parsed it off the wire: what the proxy really sent."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # as sent: names in their case, in order
    body: bytes


class WireOrigin:
    """A threaded HTTP/1.1 origin on 127.0.0.1 that frames requests with h11 (a strict parser,
    like a careful origin) and logs each one exactly as it arrived, plus any bytes it could
    not parse as a request. A smuggled request shows up as one more entry in `requests`."""

    def __init__(self, robots: bytes = b"User-agent: *\nAllow: /\n") -> None:
        import threading

        self.robots = robots
        self.requests: list[Received] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._sock = origin_socket()  # a port new to this process: see ports.py
        self._sock.listen()
        self.port = int(self._sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        import h11

        parser = h11.Connection(h11.SERVER)
        with conn:
            conn.settimeout(30)
            try:
                while True:
                    event = parser.next_event()
                    if event is h11.NEED_DATA:
                        data = conn.recv(65536)
                        parser.receive_data(data)
                        if not data:
                            return
                        continue
                    if isinstance(event, h11.ConnectionClosed):
                        return
                    assert isinstance(event, h11.Request)
                    body = b""
                    while True:
                        more = parser.next_event()
                        if more is h11.NEED_DATA:
                            parser.receive_data(conn.recv(65536))
                            continue
                        if isinstance(more, h11.Data):
                            body += bytes(more.data)
                            continue
                        break
                    got = Received(
                        event.method, event.target, list(event.headers.raw_items()), body
                    )
                    if event.target != b"/robots.txt":
                        with self._lock:
                            self.requests.append(got)
                    payload = self.robots if event.target == b"/robots.txt" else b"ok\n"
                    conn.sendall(
                        parser.send(
                            h11.Response(
                                status_code=200,
                                headers=[("Content-Length", str(len(payload)))],
                            )
                        )
                        + parser.send(h11.Data(data=payload))
                        + parser.send(h11.EndOfMessage())
                    )
                    parser.start_next_cycle()
            except h11.RemoteProtocolError as exc:
                with self._lock:
                    self.errors.append(f"{exc}")
            except (OSError, h11.LocalProtocolError):
                return

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def close(self) -> None:
        self._sock.close()
