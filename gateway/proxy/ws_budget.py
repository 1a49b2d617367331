"""How many bytes each client's WebSockets may hold in the gateway.

A relay holds a message between reading it from one side and the other side taking it. A
client that stops reading (or a dev server that stops reading: both are the user's) leaves
messages held in every one of its sockets: up to a few maximum-size messages each, times
its sockets. The budget bounds the sum per client address: counted from the bytes the
dev server's socket delivers (the WebSocket library's read-ahead included) and the
messages taken from the browser, until the other side has them. When a take goes over,
the client's relay that holds the most (the stuck one, not a neighbour behind the same
address whose message happened to arrive then) is told to close; its bytes come back
when it has. Meanwhile the dev server sockets that took while over stop reading, and
resume once the client is back under its budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.observability import instruments


class Budgets:
    """Bytes held per client address, against one limit per client."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: dict[str, int] = {}
        self.accounts: dict[str, set[Account]] = {}

    def account(self, client: str) -> Account:
        account = Account(self, client)
        self.accounts.setdefault(client, set()).add(account)
        return account


class Account:
    """One relay's share of its client's budget; `over` is set when the relay must close."""

    def __init__(self, budgets: Budgets, client: str) -> None:
        self.budgets = budgets
        self.client = client
        self.held = 0
        self.over = asyncio.Event()
        self.resume: Callable[[], None] | None = None  # while its reading is paused

    def client_held(self) -> int:
        """What all of this client's relays hold now."""
        return self.budgets.held.get(self.client, 0)

    def take(self, size: int) -> bool:
        """Count `size` more bytes; over the client's budget, its biggest holder (unless
        one is already closing and brings it back under) is told, and True."""
        self.held += size
        self.budgets.held[self.client] = self.client_held() + size
        instruments.WEBSOCKET_BUFFERED.inc(size)  # observability hook (and in give)
        return self._enforce()

    def _enforce(self) -> bool:
        """Over the client's budget (counting what relays told to close will give back):
        tell the biggest holders still open, as many as it takes to come back under. True
        when over, closing ones included."""
        held = self.client_held()
        if held <= self.budgets.limit:
            return False
        accounts = self.budgets.accounts.get(self.client, set())
        closing = sum(a.held for a in accounts if a.over.is_set())
        live = sorted((a for a in accounts if not a.over.is_set()), key=lambda a: -a.held)
        for victim in live:
            if held - closing <= self.budgets.limit:
                break
            victim.over.set()
            closing += victim.held
        return True

    def give(self, size: int) -> None:
        size = min(size, self.held)  # estimates never free more than this relay took
        self.held -= size
        instruments.WEBSOCKET_BUFFERED.dec(size)
        left = self.client_held() - size
        if left > 0:
            self.budgets.held[self.client] = left
        else:
            self.budgets.held.pop(self.client, None)
        if left <= self.budgets.limit:
            for account in self.budgets.accounts.get(self.client, ()):
                if account.resume is not None:
                    resume, account.resume = account.resume, None
                    resume()

    def close(self) -> None:
        self.give(self.held)
        accounts = self.budgets.accounts.get(self.client, set())
        accounts.discard(self)
        if accounts:
            self._enforce()  # still over without this one: the next biggest goes
        else:
            self.budgets.accounts.pop(self.client, None)


def frame_size(payload: int) -> int:
    """Bytes on the wire of an unmasked one-frame message of `payload` bytes."""
    return payload + (2 if payload < 126 else 4 if payload < 65536 else 10)
