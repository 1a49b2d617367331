"""A preview's WebSockets once the router has admitted them: the per-client cap and
buffer budget (per gateway process), the activity they mark, and a share viewer's socket
watched by its share so that revocation, expiry or the preview's end closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from gateway.asgi_types import Receive, Scope, Send
from gateway.observability import instruments
from gateway.proxy.activity import Activity
from gateway.proxy.preview_auth import client_address
from gateway.proxy.proxy_ws import RelayRegistry, WsLimits, proxy_ws
from gateway.proxy.relay_dial import RelayDialer
from gateway.proxy.share_access import ENDED, ShareAccess
from gateway.proxy.shares import Share
from gateway.proxy.ws_budget import Budgets
from shared.settings import Settings


class PreviewSockets:
    def __init__(
        self,
        settings: Settings,
        activity: Activity,
        shares: ShareAccess,
        dialer: RelayDialer | None,
    ) -> None:
        self.settings = settings
        self.activity = activity
        self.shares = shares
        self.dialer = dialer
        self.relays = RelayRegistry()
        self.limits = WsLimits(
            settings.ws_max_message_bytes, settings.ws_idle_timeout, settings.ws_max_lifetime
        )
        self.budgets = Budgets(settings.ws_buffer_per_client)
        self._per_client: dict[str, int] = {}

    async def relay(
        self,
        sid: str,
        address: str,
        host: str,
        keep_idle: Callable[[], Awaitable[bool]],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """Relay one WebSocket to the dev server, within the client's cap and budget.
        `keep_idle` says whether the preview sleeps (its idle limit then waits)."""
        client = client_address(scope)
        if self._per_client.get(client, 0) >= self.settings.ws_max_per_client:
            instruments.RATE_LIMITED.labels("websockets_per_client").inc()  # observability hook
            await send({"type": "websocket.close", "code": 1008, "reason": "too many WebSockets"})
            return
        self._per_client[client] = self._per_client.get(client, 0) + 1
        account = self.budgets.account(client)
        instruments.WEBSOCKETS.inc()  # observability hook (and the decrement below)
        instruments.WEBSOCKETS_OPEN.inc()
        try:
            await proxy_ws(
                scope,
                receive,
                send,
                address,
                host,
                self.limits,
                self.relays,
                account,
                on_activity=lambda: self.activity.touch(sid),
                keep_idle=keep_idle,
                dialer=self.dialer,
            )
        finally:
            account.close()
            instruments.WEBSOCKETS_OPEN.dec()
            left = self._per_client[client] - 1
            if left:
                self._per_client[client] = left
            else:
                del self._per_client[client]

    async def watched(
        self, share: Share, sid: str, relay: Coroutine[Any, Any, None], send: Send
    ) -> None:
        """A share viewer's WebSocket `relay`, in a task of its own that the share's
        revocation or expiry, or the preview's end, cancels (it then closes with 1008 or
        1001)."""
        task = asyncio.create_task(relay, name=f"share ws {sid}")
        self.shares.watch(share, sid, task)
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we were cancelled ourselves (the relay was with us)
            # Cancelled before the relay began (the handshake): refuse it.
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": 1008, "reason": ENDED})
