"""The HTTP/1.1 protocol ``swarmpilot-predictor serve`` runs uvicorn with: httptools', with
a bound on a request's line and headers.

uvicorn's httptools protocol takes headers of any length (its h11 one stops at 16 kB), and
gathers a long one piece by piece on the event loop: one 100 MB header, on any route and
without the API key, held the loop 4.4 s (every other request waited) and peaked 196 MB.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .request_ids import new_request_id, request_id_of

# Far above what a request of this service sends (its longest URL, five identity parts of
# 200 characters, percent-encoded, is about 12 kB: a character of 4 UTF-8 bytes is 12 in the
# URL, 2.4 kB a part).
MAX_HEADER_BYTES = 64 * 1024


class BoundedHeadersProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering a request whose line and headers pass
    ``MAX_HEADER_BYTES`` with a plain-text 431 and closing its connection, as uvicorn
    answers a request it cannot parse with its 400; the body is not counted, a chunked
    body's trailers (headers after its last chunk, gathered as the others are) are, from
    the first read after the one in which they begin (so the bound is passed by at most a
    read, up to 256 kB)."""

    _header_bytes = 0  # of the request whose headers are being read, before this read
    _tail = b""  # the last bytes of the previous read, where the headers' end may begin
    _in_body = False
    # Past a chunk's header with none of its bytes read since: the last chunk's (its size 0),
    # whose trailers follow; the reads of theirs count with the headers' (a 100 MB trailer
    # held the loop 5.3 s and peaked 310 MB, as a header did).
    _trailing = False
    _trailer_bytes = 0
    _body_read = 0  # bytes of body given in this read

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
            return
        self._body_read = 0
        super().data_received(data)
        # (Not a read with body bytes, where the trailers begin: the chunks' framing beside
        # them is not told apart, and many chunks of a few bytes are framing mostly.)
        if self._trailing and not self._body_read:
            self._trailer_bytes += len(data)
            if self._header_bytes + self._trailer_bytes > MAX_HEADER_BYTES:
                if self.cycle.response_started:  # answered already (not waiting for the body): cut short
                    self.transport.close()
                else:
                    self._refuse_headers()

    def on_chunk_header(self) -> None:
        self._trailing = True

    def on_body(self, body: bytes) -> None:
        self._trailing, self._trailer_bytes = False, 0
        self._body_read += len(body)
        super().on_body(body)

    def on_headers_complete(self) -> None:
        self._in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body, self._trailing, self._header_bytes, self._trailer_bytes, self._tail = False, False, 0, 0, b""
        # (the next request's are counted anew)
        super().on_message_complete()

    def _refuse_headers(self) -> None:
        msg = f"Request line and headers longer than {MAX_HEADER_BYTES // 1024} kB."
        # Answered before the service sees it, so /metrics cannot count it: said in the log, as
        # uvicorn says a request it cannot parse (a 431 left no trace anywhere), under an id
        # the answer carries, as the service's answers do: one made here where its headers
        # are not read, else (its trailers passed the bound) the request's own, which the
        # service's lines about it name (its client-left line), the caller's where it sent one.
        if self._in_body:
            rid = self.scope.get("request_id") or request_id_of(self.scope["headers"])
        else:
            rid = new_request_id()
        # (its id in a JSON line's request_id too: the line is written outside the request's work)
        self.logger.warning("Request line and headers longer than %d kB received: answered 431 (request %s).",
                            MAX_HEADER_BYTES // 1024, rid, extra={"for_request": rid})
        content = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.append(b"x-request-id: " + rid.encode("ascii") + b"\r\n")
        content.extend([b"content-type: text/plain; charset=utf-8\r\n",
                        b"content-length: " + str(len(msg)).encode("ascii") + b"\r\n",
                        b"connection: close\r\n", b"\r\n", msg.encode("ascii")])
        self.transport.write(b"".join(content))
        self.transport.close()
