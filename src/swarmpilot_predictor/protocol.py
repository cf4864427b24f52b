"""The HTTP/1.1 protocol ``swarmpilot-predictor serve`` runs uvicorn with: httptools', with
a bound on a request's line and headers.

uvicorn's httptools protocol takes headers of any length (its h11 one stops at 16 kB), and
gathers a long one piece by piece on the event loop: one 100 MB header, on any route and
without the API key, held the loop 4.4 s (every other request waited) and peaked 196 MB.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Far above what a request of this service sends (its longest URL, five identity parts of
# 200 characters, percent-encoded, is about 2.4 kB).
MAX_HEADER_BYTES = 64 * 1024


class BoundedHeadersProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering a request whose line and headers pass
    ``MAX_HEADER_BYTES`` with a plain-text 431 and closing its connection, as uvicorn
    answers a request it cannot parse with its 400; the body is not counted."""

    _header_bytes = 0  # of the request whose headers are being read, before this read
    _tail = b""  # the last bytes of the previous read, where the headers' end may begin
    _in_body = False

    def data_received(self, data: bytes) -> None:
        if not self._in_body:
            # Where the headers end in this read, the bytes past it (a body's start, read with
            # them) are not theirs.
            end = (self._tail + data).find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else end + 4 - len(self._tail)
            self._tail = data[-3:]
            if self._header_bytes > MAX_HEADER_BYTES:
                self._refuse_headers()
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body, self._header_bytes, self._tail = False, 0, b""  # the next request's are counted anew
        super().on_message_complete()

    def _refuse_headers(self) -> None:
        msg = f"Request line and headers longer than {MAX_HEADER_BYTES // 1024} kB."
        content = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: text/plain; charset=utf-8\r\n",
                        b"content-length: " + str(len(msg)).encode("ascii") + b"\r\n",
                        b"connection: close\r\n", b"\r\n", msg.encode("ascii")])
        self.transport.write(b"".join(content))
        self.transport.close()
