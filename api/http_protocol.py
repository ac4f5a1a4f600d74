"""uvicorn's httptools protocol with a limit on the size of a request's head.

httptools buffers a header of any size: a client could send megabytes of headers before
the application sees anything. This subclass counts the bytes of each request's head
(request line and headers) as they arrive and answers 431 once they pass
``MAX_HEAD_BYTES``, before the application or any authentication runs. Run the API
with ``uvicorn --http api.http_protocol:LimitedHttpToolsProtocol``.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Browsers send 1-4 KiB; nginx refuses a header line past 8 KiB by default.
MAX_HEAD_BYTES = 32 * 1024
_BODY = b'{"error":{"code":"headers_too_large","message":"The request headers are too large."}}'


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            # Every byte of a chunk after which the head is still incomplete is head.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self.transport.write(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                    b"content-type: application/json\r\n"
                    b"content-length: " + str(len(_BODY)).encode() + b"\r\n"
                    b"connection: close\r\n\r\n" + _BODY
                )
                self.transport.close()
