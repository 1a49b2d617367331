"""Following one starting preview's events as they arrive, for a request held on it.

The session tracker folds every live session's events once a second, and the proxy's
held requests (a resume's first visit, a start's early request) used to poll the record
with a backoff up to a second: together up to two seconds between the dev server's
``ready`` and the first byte. A held request instead has its preview's events read with a
blocking XREAD on its container's stream and folded at once (``Previews.refresh``, which
publishes the route change every gateway listens to). One such reader per preview and
gateway (the proxy's ``ReadyWaits`` shares it between the requests waiting). The starting
page's status call is held the same way (``until_news``: the next event, not only the end),
so the page reloads at ``ready`` instead of at its next poll.
"""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from gateway.sessions.previews import Previews
from shared import keys
from shared.states import STARTING_STATES

BLOCK = 5.0  # seconds one blocking read may take (below the blocking client's timeout)


class Follower:
    """The proxy's hook: ``until_started`` returns once the preview left its starting
    states (ready, failed, gone) or ``timeout`` passed."""

    def __init__(self, previews: Previews, blocking_redis: Redis) -> None:
        self.previews = previews
        self.blocking = blocking_redis

    async def until_started(self, sid: str, timeout: float) -> None:
        await self._follow(sid, timeout, news=False)

    async def until_news(self, sid: str, timeout: float) -> None:
        """Returns once the preview has a new event (folded: a step's progress, its
        ``ready``), left its starting states, or ``timeout`` passed."""
        await self._follow(sid, timeout, news=True)

    async def _follow(self, sid: str, timeout: float, news: bool) -> None:
        deadline = time.monotonic() + timeout
        woken = False
        while True:
            session = await self.previews.load(sid)
            if session is None or session.state not in STARTING_STATES:
                return
            if session.container:
                cursor = session.cursor
                await self.previews.refresh(session)  # what arrived before we listened
                if session.state not in STARTING_STATES:
                    return
                if news and (woken or session.cursor != cursor):
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if not session.container:  # not attached yet: a moment, then look again
                await asyncio.sleep(min(remaining, 0.1))
                continue
            block = max(1, int(min(remaining, BLOCK) * 1000))
            woken = bool(
                await self.blocking.xread(
                    {keys.events(session.container): session.cursor}, count=1, block=block
                )
            )
