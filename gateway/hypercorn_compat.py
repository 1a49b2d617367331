"""Make hypercorn report the browser's WebSocket close code and reason to the app.

Hypercorn answers a client's close frame itself and then tells the application only 1000
or 1006 (pgjones/hypercorn#127), so a proxy cannot relay the browser's code to the dev
server. This records the peer's close frame on the stream and puts its code and reason
(ASGI 2.5's `reason`) on `websocket.disconnect`. Applied once, at start-up; the proxy
tests pin the behaviour, so an upgrade that changes these internals fails loudly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hypercorn.protocol import ws_stream
from hypercorn.protocol.events import StreamClosed
from wsproto.events import CloseConnection, Event

_PATCHED = "_preview_gateway_patched"


def install() -> None:
    cls: Any = ws_stream.WSStream
    if getattr(cls, _PATCHED, False):
        return
    original_events = cls._handle_events
    original_handle = cls.handle

    async def _handle_events(self: Any) -> None:
        events = self.connection.events

        def capture() -> Iterator[Event]:
            for event in events():
                if isinstance(event, CloseConnection):
                    self._peer_close = (event.code, event.reason or "")
                yield event

        self.connection.events = capture
        try:
            await original_events(self)
        finally:
            del self.connection.events

    async def handle(self: Any, event: Any) -> None:
        peer = getattr(self, "_peer_close", None)
        if isinstance(event, StreamClosed) and peer and self.app_put is not None:
            put = self.app_put

            async def app_put(message: dict[str, Any]) -> None:
                if message.get("type") == "websocket.disconnect":
                    message = {**message, "code": peer[0], "reason": peer[1]}
                await put(message)

            self.app_put = app_put
        await original_handle(self, event)

    cls._handle_events = _handle_events
    cls.handle = handle
    setattr(cls, _PATCHED, True)
