"""gateway.proxy.upstream bounds what one response buffers ahead of its client: reading
from the dev server pauses at _QUEUE_HIGH chunks or _QUEUE_BYTES bytes, whichever comes
first, and resumes once the client has taken half of it. (Each of an HTTP/2 client's
H2_MAX_STREAMS streams holds this much at most while the client does not read.)"""

from __future__ import annotations

from gateway.proxy.upstream import _QUEUE_BYTES, _Connection


class Reading:
    """The one thing the connection asks of its transport here: pause and resume."""

    paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


async def test_reading_pauses_at_the_byte_bound_and_resumes_at_half() -> None:
    conn = _Connection("127.0.0.1:1")
    transport = Reading()
    conn.transport = transport  # type: ignore[assignment]
    conn.start()
    piece = b"x" * (_QUEUE_BYTES // 4)
    for _ in range(3):
        conn.on_body(piece)
    assert not transport.paused  # 3 chunks, 3/4 of the bytes
    conn.on_body(piece)
    assert transport.paused
    taken = 0
    body = conn.body()
    while transport.paused:
        taken += len(await anext(body))
    assert taken == 3 * len(piece)  # under half left: reading again
