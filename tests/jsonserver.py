"""One JSON document served to every GET over HTTP by the standard library's server on
127.0.0.1, in a thread, that can be made slow (``delay``, seconds before each answer) or
away (``down``: 503 to every request), or answer with another status (``status``,
``tokenless``), or take every request and close without an answer (``hangup``: a
service that went away with the request), counting the requests it answers at once: a key
server for tests of ``AUTH_JWKS_URL`` (the document a JWKS, at ``url``), or a service
answering a fixed list for sagactl's tests (at ``base``)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


class JsonServer:
    def __init__(
        self,
        jwks: bytes,
        *,
        delay: float = 0.0,
        down: bool = False,
        status: int = 200,
        tokenless: tuple[int, bytes] | None = None,
        hangup: bool = False,
    ) -> None:
        """``status`` and ``jwks`` are every answer's, but a request without an
        ``Authorization`` header gets ``tokenless`` (status, body) if given."""
        self.jwks, self.delay, self.down = jwks, delay, down
        #: set once a request has arrived (and is being answered, after ``delay``)
        self.asked = threading.Event()
        #: the path and query of every request, in order
        self.paths: list[str] = []
        #: requests being answered now, and the most there were at once
        self.in_flight = self.most_in_flight = 0
        lock = threading.Lock()
        server, status_of_all = self, status

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.paths.append(self.path)
                server.asked.set()
                if hangup:  # the request taken, no answer: the connection closes
                    self.rfile.read(int(self.headers.get("content-length") or 0))
                    self.close_connection = True
                    return
                with lock:
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                time.sleep(server.delay)
                with lock:
                    server.in_flight -= 1
                if server.down:
                    status, body = 503, b"away"
                elif tokenless is not None and "Authorization" not in self.headers:
                    status, body = tokenless
                else:
                    status, body = status_of_all, server.jwks
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a test of just that)

            do_POST = do_GET  # a POST is answered the same way (its body unread)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    @property
    def url(self) -> str:
        """Where a key server's JWKS is (any path answers the same)."""
        return f"{self.base}/jwks.json"

    def __enter__(self) -> JsonServer:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()
