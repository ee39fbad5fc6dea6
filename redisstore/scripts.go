package redisstore

import "github.com/redis/go-redis/v9"

// The Lua scripts below are the whole server-side state machine (SPEC §2).
// Each runs atomically on the server that owns KEYS[1]; every key a script
// touches is KEYS[1], and the notification channel has the same name (pub/sub
// channels and keys are separate namespaces), so all of them hash to one
// Redis Cluster slot.
//
// A record is one string value, so that a step is a GET and a SET … PX (the
// expiry travels with the write) and nothing more:
//
//	offset  size  field
//	0       1     state: "p" in progress, "c" completed, "r" released tombstone
//	1       8     fence                    (big-endian IEEE 754 double)
//	9       8     lease end, µs            (in progress; 0 otherwise)
//	17      8     acquired at, µs          (when the current fence took it)
//	25      4     fingerprint length n     (big-endian uint32)
//	29      n     fingerprint
//	29+n    …     result                   (completed only)
//
// written and read with the struct library built into Redis's Lua. Times
// are the server's TIME in µs since the Unix epoch, never the client's
// clock. Every number stays below 2^53 (µs timestamps until the year 2255),
// so doubles hold it exactly, and a reply turns it into an exact integer
// (num() formats one as a decimal string for Get). Go refuses fences of 2^53
// and above before asking Redis.
//
// Redis replicates the effects of scripts (always since 7.0, by default
// since 5.0), so calling TIME before writing is allowed and replicas store
// the deadlines the primary computed.

// luaCommon defines now(), the server clock in µs; num(), which formats an
// integer without exponent; and head(), which packs a record header.
const luaCommon = `
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function num(x) return string.format('%.0f', x) end
local function head(s, n, l, a, fl) return struct.pack('>c1dddI4', s, n, l, a, fl) end
`

// luaPublish wakes waiters (mode "p": PUBLISH; "s": the sharded SPUBLISH of
// Redis Cluster 7; anything else: no notification), and only when someone
// waits: a Wait subscribes to the record's channel on the server that owns
// the key (the primary of its slot on a Cluster) before it reads the
// record's state, so a completion either counts its subscription here (and
// publishes) or happened before that read (and the waiter sees it). A
// completion nobody waits for costs one dictionary lookup instead of a
// PUBLISH, which Redis would also send to every replica.
const luaPublish = `
local function notify(mode)
  if mode == 'p' then
    if redis.call('PUBSUB', 'NUMSUB', KEYS[1])[2] > 0 then redis.call('PUBLISH', KEYS[1], 'x') end
  elseif mode == 's' then
    if redis.call('PUBSUB', 'SHARDNUMSUB', KEYS[1])[2] > 0 then redis.call('SPUBLISH', KEYS[1], 'x') end
  end
end
`

// luaHeld loads the record and returns (record, fence, acquired at,
// fingerprint length) when it is in progress with the fence in ARGV[1], and
// nil otherwise.
const luaHeld = `
local function held()
  local v = redis.call('GET', KEYS[1])
  if not v or string.byte(v, 1) ~= 112 then return nil end -- 'p'
  local _, n, _, a, fl = struct.unpack('>c1dddI4', v)
  if n ~= tonumber(ARGV[1]) then return nil end
  return v, n, a, fl
end
`

// beginScript: ARGV = fingerprint, lease µs, in-progress key TTL ms.
// Returns {1, fence, takeover 0|1} acquired, {2, fence, lease left µs}
// in flight, {3, "", 0, result} replay, {4} mismatch.
var beginScript = redis.NewScript(luaCommon + `
local v = redis.call('GET', KEYS[1])
local prev = 0
if v then
  local s, n, l, _, fl = struct.unpack('>c1dddI4', v)
  if s == 'r' then
    prev = n
  else
    if string.sub(v, 30, 29 + fl) ~= ARGV[1] then return {4} end
    if s == 'c' then return {3, '', 0, string.sub(v, 30 + fl)} end
    local t = now()
    if l > t then return {2, n, l - t} end
    n = n + 1
    redis.call('SET', KEYS[1], head('p', n, t + tonumber(ARGV[2]), t, fl) .. ARGV[1], 'PX', ARGV[3])
    return {1, n, 1}
  end
end
local t = now()
local n = math.max(prev + 1, t)
redis.call('SET', KEYS[1], head('p', n, t + tonumber(ARGV[2]), t, #ARGV[1]) .. ARGV[1], 'PX', ARGV[3])
return {1, n, 0}
`)

// completeScript: ARGV = fence, result, retention ms, notify mode.
// Returns 1 done, 0 lease lost (nothing changed).
var completeScript = redis.NewScript(luaCommon + luaHeld + luaPublish + `
local v, n, a, fl = held()
if not v then return 0 end
redis.call('SET', KEYS[1], head('c', n, 0, a, fl) .. string.sub(v, 30, 29 + fl) .. ARGV[2], 'PX', ARGV[3])
notify(ARGV[4])
return 1
`)

// releaseScript: ARGV = fence, notify mode. Returns 1 done, 0 lease lost.
//
// The record is deleted, except when the server clock (µs) has not yet passed
// the fence: then a tombstone keeps the fence until it has, so that the next
// fresh fence, max(previous+1, now), is still larger than this one.
var releaseScript = redis.NewScript(luaCommon + luaHeld + luaPublish + `
local v, n = held()
if not v then return 0 end
local t = now()
if n >= t then
  redis.call('SET', KEYS[1], head('r', n, 0, 0, 0), 'PX', math.floor((n - t) / 1000) + 2)
else
  redis.call('DEL', KEYS[1])
end
notify(ARGV[2])
return 1
`)

// extendScript: ARGV = fence, lease µs, in-progress key TTL ms.
// Returns 1 done, 0 lease lost.
var extendScript = redis.NewScript(luaCommon + luaHeld + `
local v = held()
if not v then return 0 end
redis.call('SETRANGE', KEYS[1], 9, struct.pack('>d', now() + tonumber(ARGV[2])))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`)

// getScript: no ARGV. Returns {0} for no record, else
// {state, fp, fence, lease end µs, acquired µs, result, now µs, pttl ms}.
var getScript = redis.NewScript(luaCommon + `
local v = redis.call('GET', KEYS[1])
if not v then return {0} end
local s, n, l, a, fl = struct.unpack('>c1dddI4', v)
if s ~= 'p' and s ~= 'c' then return {0} end
return {s, string.sub(v, 30, 29 + fl), num(n), num(l), num(a), string.sub(v, 30 + fl), num(now()), redis.call('PTTL', KEYS[1])}
`)
