"""How many bytes each client's WebSockets may hold in the gateway.

A relay holds a message between reading it from one side and the other side taking it. A
client that stops reading (or a dev server that stops reading: both are the user's) leaves
messages held in every one of its sockets: up to a few maximum-size messages each, times
its sockets. The budget bounds the sum per client address: counted from the bytes the
dev server's socket delivers (the WebSocket library's read-ahead included) and the
messages taken from the browser, until the other side has them. A relay whose take goes
over its client's budget is closed with 1008 and its bytes are given back.
"""

from __future__ import annotations

from gateway import instruments


class Budgets:
    """Bytes held per client address, against one limit per client."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: dict[str, int] = {}

    def account(self, client: str) -> Account:
        return Account(self, client)

    def total(self) -> int:
        return sum(self.held.values())


class Account:
    """One relay's share of its client's budget."""

    def __init__(self, budgets: Budgets, client: str) -> None:
        self.budgets = budgets
        self.client = client
        self.held = 0

    def take(self, size: int) -> bool:
        """Count `size` more bytes; False when the client is now over its budget."""
        self.held += size
        held = self.budgets.held.get(self.client, 0) + size
        self.budgets.held[self.client] = held
        instruments.WEBSOCKET_BUFFERED.inc(size)  # observability hook (and in give)
        return held <= self.budgets.limit

    def give(self, size: int) -> None:
        size = min(size, self.held)  # estimates never free more than this relay took
        self.held -= size
        instruments.WEBSOCKET_BUFFERED.dec(size)
        left = self.budgets.held.get(self.client, 0) - size
        if left > 0:
            self.budgets.held[self.client] = left
        else:
            self.budgets.held.pop(self.client, None)

    def close(self) -> None:
        self.give(self.held)


def frame_size(payload: int) -> int:
    """Bytes on the wire of an unmasked one-frame message of `payload` bytes."""
    return payload + (2 if payload < 126 else 4 if payload < 65536 else 10)
