"""The warm pool's Lua scripts: taking a container for a user, and pooling a warm one.

Each runs in one Redis round trip, so no two gateways can hand out the same container and
no used container reaches the general pool. ``containers.Containers`` registers and calls
them; their keys come from ``shared/keys.py`` (passed in, with placeholders).
"""

# Acquire for a user: first one of that user's reserved containers (see
# gateway/containers/reserved.py; the one that last served this project first, its
# node_modules are kept, else the most recently released), else the oldest container of the
# general pool. Skipped: entries whose heartbeat is gone (dead while pooled), reserved ones
# past their time or of another image, and any general-pool entry whose record says a user
# had it or it served a session (one pooled by older code): never handed to another user.
# Only general-pool draws count as demand (autoscaling): a reserved hit takes nothing there.
# KEYS[1] = the image's current content id, KEYS[2] = demand, KEYS[3] = pool stats,
# KEYS[4] = the user's reserved set, KEYS[5] = every reserved container.
# ARGV[1] = the affinity key (``containers.affinity``); ARGV[2], ARGV[3], ARGV[4] = the
# container record, heartbeat and pool keys with "{cid}"/"{image}" placeholders (built by
# shared/keys.py); ARGV[5] = now; ARGV[6] = this caller's image id if the first key is
# unset; ARGV[7] = a demand token; ARGV[8] = forget demand before this time; ARGV[9] =
# demand entries kept at most; ARGV[10] = the user; ARGV[11] = only a container on this
# host ('' for any: a resume must be where its hibernation archive is).
# -> nil | {cid, host, address, "reserved"|"pool"}
ACQUIRE = """
local function key(template, name, value) return (string.gsub(template, name, value)) end
local image = redis.call('GET', KEYS[1]) or ARGV[6]
local function alive(cid) return redis.call('EXISTS', key(ARGV[3], '{cid}', cid)) == 1 end
local function here(host) return ARGV[11] == '' or host == ARGV[11] end
local function take(cid, how)
  local ctr = key(ARGV[2], '{cid}', cid)
  redis.call('HSET', ctr, 'state', 'assigned', 'assigned_at', ARGV[5], 'user', ARGV[10])
  local found = redis.call('HMGET', ctr, 'host', 'address')
  return {cid, found[1] or '', found[2] or '', how}
end
local reserved = redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. ARGV[5], '+inf')
local mine, newest = nil, nil
for i = #reserved, 1, -1 do
  local cid = reserved[i]
  local found = redis.call('HMGET', key(ARGV[2], '{cid}', cid), 'state', 'user', 'image', 'project',
    'host')
  if found[1] == 'reserved' and found[2] == ARGV[10] and found[3] == image and here(found[5])
    and alive(cid) then
    newest = newest or cid
    if ARGV[1] ~= '' and found[4] == ARGV[1] then
      mine = cid
      break
    end
  end
end
local chosen = mine or newest
if chosen then
  redis.call('ZREM', KEYS[4], chosen)
  redis.call('ZREM', KEYS[5], chosen)
  redis.call('HINCRBY', KEYS[3], 'reserved_hits', 1)
  return take(chosen, 'reserved')
end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[8])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[9]) - 1)
if image == '' then
  redis.call('HINCRBY', KEYS[3], 'misses', 1)
  return nil
end
local pool = key(ARGV[4], '{image}', image)
local entries = redis.call('LRANGE', pool, 0, -1)
for i = #entries, 1, -1 do
  local cid = entries[i]
  local used = redis.call('HMGET', key(ARGV[2], '{cid}', cid), 'user', 'served', 'host')
  if here(used[3]) and alive(cid) and (not used[1] or used[1] == '')
    and (not used[2] or used[2] == '0') then
    chosen = cid
    break
  end
end
if not chosen then
  redis.call('HINCRBY', KEYS[3], 'misses', 1)
  return nil
end
redis.call('HINCRBY', KEYS[3], 'hits', 1)
redis.call('LREM', pool, 1, chosen)
return take(chosen, 'pool')
"""


# KEYS[1] = container record. ARGV: cid, now, pool key with "{image}". Only a container
# still warming that no user ever had: the general pool never holds a used one.
ADD = """
if redis.call('HGET', KEYS[1], 'state') ~= 'warming' then return 0 end
local used = redis.call('HMGET', KEYS[1], 'user', 'served')
if (used[1] and used[1] ~= '') or (used[2] and used[2] ~= '0') then return 0 end
local image = redis.call('HGET', KEYS[1], 'image')
local pool = string.gsub(ARGV[3], '{image}', image)
redis.call('HSET', KEYS[1], 'state', 'pooled', 'project', '', 'session', '',
  'pooled_at', ARGV[2])
redis.call('LREM', pool, 0, ARGV[1])
redis.call('LPUSH', pool, ARGV[1])
return 1
"""
