"""Preview records in Redis: a hash id → JSON and a sorted set id → time, bounded.

Inserting is one Lua script: each record is added only if its id is new (HSETNX), then
records older than the retention and those beyond the maximum count are dropped, oldest
first, a bounded batch per call so no insert ever blocks Redis for long.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import cast

from redis.asyncio import Redis

from gateway.observability.records import Record
from shared import keys
from shared.redis_types import text

log = logging.getLogger(__name__)

READ_BATCH = 1000

# KEYS: index, data. ARGV: cutoff time, max records, trim batch, then id/score/json triples.
# Returns 1 or 0 per record: whether it was new.
_INSERT = """
local added = {}
for i = 4, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 2]) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
    table.insert(added, 1)
  else
    table.insert(added, 0)
  end
end
local batch = tonumber(ARGV[3])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, batch)
local over = redis.call('ZCARD', KEYS[1]) - #old - tonumber(ARGV[2])
if over > 0 then
  local extra = redis.call('ZRANGE', KEYS[1], #old, #old + math.min(over, batch) - 1)
  for _, id in ipairs(extra) do table.insert(old, id) end
end
if #old > 0 then
  redis.call('ZREM', KEYS[1], unpack(old))
  redis.call('HDEL', KEYS[2], unpack(old))
end
return added
"""


class RecordStore:
    def __init__(self, redis: Redis, retention_days: float, max_records: int) -> None:
        self.redis = redis
        self.retention = retention_days * 86400
        self.max_records = max(1, max_records)
        self._insert = redis.register_script(_INSERT)

    async def insert(self, records: Sequence[Record]) -> list[bool]:
        """Store the records whose id is new; for each, whether it was. Raises RedisError."""
        args: list[str | float | int] = [
            repr(time.time() - self.retention),
            self.max_records,
            keys.RECORDS_TRIM_BATCH,
        ]
        for found in records:
            args += [found.id, repr(found.ts), found.to_json()]
        reply = await self._insert(keys=[keys.RECORDS_INDEX, keys.RECORDS_DATA], args=args)
        return [bool(int(flag)) for flag in reply]

    async def scan(
        self, since: float, until: float = float("inf"), kind: str | None = None
    ) -> AsyncIterator[list[Record]]:
        """Records with since <= ts <= until, oldest first, in batches."""
        low: str = repr(since)
        high = "+inf" if until == float("inf") else repr(until)
        offset = 0
        while True:
            ids = await self.redis.zrangebyscore(
                keys.RECORDS_INDEX, low, high, start=offset, num=READ_BATCH
            )
            if not ids:
                return
            offset += len(ids)
            raws = await self.redis.hmget(keys.RECORDS_DATA, [text(cast(bytes, i)) for i in ids])
            batch = []
            for raw in raws:
                if raw is None:
                    continue  # trimmed between the two reads
                try:
                    found = Record.from_json(text(raw))
                except (ValueError, TypeError):
                    log.warning("unreadable preview record skipped")
                    continue
                if kind is None or found.kind == kind:
                    batch.append(found)
            yield batch
            if len(ids) < READ_BATCH:
                return

    async def between(
        self, since: float, until: float = float("inf"), kind: str | None = None
    ) -> list[Record]:
        found: list[Record] = []
        async for batch in self.scan(since, until, kind):
            found.extend(batch)
        return found

    async def recent(self, count: int) -> list[Record]:
        """The newest `count` records, newest first."""
        ids = await self.redis.zrevrange(keys.RECORDS_INDEX, 0, max(0, count - 1))
        if not ids:
            return []
        raws = await self.redis.hmget(keys.RECORDS_DATA, [text(cast(bytes, i)) for i in ids])
        return [Record.from_json(text(r)) for r in raws if r is not None]

    async def count(self) -> int:
        return int(await self.redis.zcard(keys.RECORDS_INDEX))
