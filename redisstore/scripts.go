package redisstore

import "github.com/redis/go-redis/v9"

// The Lua scripts below are the whole server-side state machine (SPEC §2).
// Each runs atomically on the server that owns KEYS[1]; every key a script
// touches is KEYS[1], and the notification channel has the same name (pub/sub
// channels and keys are separate namespaces), so all of them hash to one
// Redis Cluster slot.
//
// A record is one string value, so that a step is a GET and a SET … PX (the
// expiry travels with the write) and nothing more. Two layouts exist, told
// apart by the state byte:
//
// Compact (state "N", "P", "C", "R"), written under the compact key (Key):
//
//	in progress  "N"  key TTL ms d, lease µs d, fp length B, fp   (native)
//	in progress  "P"  fence d, lease end d, acquired at d, fp length B, fp
//	completed    "C"  fence d, acquired at d, fp length B, fp, result
//	released     "R"  fence d                                (tombstone)
//
// "N" is what Begin's native path writes (nativeBegin in store.go): one
// SET … NX GET PX, with no script, so the client cannot know the server's
// clock when it builds the value. Its times come from the key's expiry
// instead: the server set it to (creation ms + key TTL), so PEXPIRETIME −
// key TTL is the millisecond it was created, and the record's fence and
// acquired time are that millisecond in µs, its lease end that plus the
// lease. The expiry moves only when a script rewrites the record, and every
// script writes "P", "C" or "R" (never "N"), so the derivation holds for as
// long as the "N" exists.
//
// Legacy (state "p", "c", "r"), which versions before the compact records
// wrote, and which the store still writes under the legacy key (LegacyKey)
// and for fingerprints of 256 bytes or more:
//
//	"p"/"c"/"r"  fence d, lease end d (0 unless "p"), acquired at d,
//	             fp length I4, fp, result (completed only)
//
// d is a big-endian IEEE 754 double, B one byte, I4 a big-endian uint32
// (the struct library built into Redis's Lua). Times are the server's TIME
// (or, for "N", its key expiry) in µs since the Unix epoch, never the
// client's clock. Every number stays
// below 2^53 (µs timestamps until the year 2255), so doubles hold it
// exactly, and a reply turns it into an exact integer (num() formats one as
// a decimal string for Get). Go refuses fences of 2^53 and above before
// asking Redis.
//
// Every script gets two keys in one Redis Cluster slot (they share the hash
// tag): KEYS[1], the compact key, and KEYS[2], the legacy key (absent with
// Options.SkipLegacyKeys). A record is looked up under KEYS[1], then
// KEYS[2], and changed where it was found, in
// that key's layout, so records written before an upgrade stay readable and
// versions that read only the legacy layout keep reading them. A new record
// goes under the key Begin's mode argument names: KEYS[1] (compact) by
// default, KEYS[2] with Options.LegacyRecords.
//
// Redis replicates the effects of scripts (always since 7.0, by default
// since 5.0), so calling TIME before writing is allowed and replicas store
// the deadlines the primary computed; since 7.0 a SET … PX also reaches
// replicas and the AOF as an absolute PXAT, so a promoted replica derives
// an "N" record's fence exactly as its primary did.
//
// Fences only grow, per key, across deletions too: a record carrying fence
// n is never gone (expired or deleted) before the server's millisecond
// clock has passed n's millisecond. Records live for at least 2 ms (every
// PX is at least that), and Release leaves a tombstone ("R") when it runs
// within that millisecond. So a fresh fence, max(tombstone+1, TIME) in a
// script or the creation millisecond of an "N", exceeds every earlier one.

// luaCommon defines now(), the server clock in µs; num(), which formats an
// integer without exponent; load(), which finds the record (one MGET of
// both names: one command, where a GET of each would be two when the
// compact name holds nothing; a record under the legacy name wins over an
// "N" under the compact name, which a native Begin may have written without
// seeing it, see nativeBegin); dec(), which
// decodes either layout; and enc(), which encodes a record in the layout of
// the key it goes to.
const luaCommon = `
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function num(x) return string.format('%.0f', x) end
local function load()
  if not KEYS[2] then
    local v = redis.call('GET', KEYS[1])
    if v then return 1, v end
    return nil, nil
  end
  local m = redis.call('MGET', KEYS[1], KEYS[2])
  if m[1] and not (m[2] and string.sub(m[1], 1, 1) == 'N') then return 1, m[1] end
  if m[2] then return 2, m[2] end
  return nil, nil
end
local function dec(v, i)
  local s = string.sub(v, 1, 1)
  if s == 'N' then
    local _, ttl, ls, fl = struct.unpack('>c1ddB', v)
    local a = (redis.call('PEXPIRETIME', KEYS[i]) - ttl) * 1000
    return 'p', a, a + ls, a, string.sub(v, 19, 18 + fl), 19 + fl
  elseif s == 'C' then
    local _, n, a, fl = struct.unpack('>c1ddB', v)
    return 'c', n, 0, a, string.sub(v, 19, 18 + fl), 19 + fl
  elseif s == 'P' then
    local _, n, l, a, fl = struct.unpack('>c1dddB', v)
    return 'p', n, l, a, string.sub(v, 27, 26 + fl), 27 + fl
  elseif s == 'R' then
    local _, n = struct.unpack('>c1d', v)
    return 'r', n, 0, 0, '', 10
  end
  local _, n, l, a, fl = struct.unpack('>c1dddI4', v)
  return s, n, l, a, string.sub(v, 30, 29 + fl), 30 + fl
end
local function enc(i, s, n, l, a, fp, res)
  if i == 1 and #fp < 256 then
    if s == 'p' then return struct.pack('>c1dddB', 'P', n, l, a, #fp) .. fp end
    if s == 'c' then return struct.pack('>c1ddB', 'C', n, a, #fp) .. fp .. res end
    return struct.pack('>c1d', 'R', n)
  end
  return struct.pack('>c1dddI4', s, n, l, a, #fp) .. fp .. (res or '')
end
`

// luaPublish wakes waiters (mode "p": PUBLISH; "s": the sharded SPUBLISH of
// Redis Cluster 7; anything else: no notification), and only when someone
// waits: a Wait subscribes to the record's channel on the server that owns
// the key (the primary of its slot on a Cluster) before it reads the
// record's state, so a completion either counts its subscription here (and
// publishes) or happened before that read (and the waiter sees it). A
// completion nobody waits for costs one dictionary lookup instead of a
// PUBLISH, which Redis would also send to every replica.
//
// Wait listens on the compact key's channel (KEYS[1]); versions before the
// compact records listened on the legacy key's (KEYS[2]), which is also
// notified when the record is there (i == 2).
const luaPublish = `
local function notify1(mode, ch)
  if mode == 'p' then
    if redis.call('PUBSUB', 'NUMSUB', ch)[2] > 0 then redis.call('PUBLISH', ch, 'x') end
  elseif mode == 's' then
    if redis.call('PUBSUB', 'SHARDNUMSUB', ch)[2] > 0 then redis.call('SPUBLISH', ch, 'x') end
  end
end
local function notify(i, mode)
  notify1(mode, KEYS[1])
  if i == 2 then notify1(mode, KEYS[2]) end
end
`

// luaHeld finds the record and returns (key index, fence, acquired at,
// fingerprint) when it is in progress with the fence in ARGV[1], and nil
// otherwise.
const luaHeld = `
local function held()
  local i, v = load()
  if not v then return nil end
  local s, n, _, a, fp = dec(v, i)
  if s ~= 'p' or n ~= tonumber(ARGV[1]) then return nil end
  return i, n, a, fp
end
`

// beginScript: ARGV = fingerprint, lease µs, in-progress key TTL ms, key
// index of a new record (1 compact, 2 legacy).
// Returns {1, fence, takeover 0|1} acquired, {2, fence, lease left µs}
// in flight, {3, "", 0, result} replay, {4} mismatch.
var beginScript = redis.NewScript(luaCommon + `
local i, v = load()
local prev = 0
if v then
  local s, n, l, a, fp, ro = dec(v, i)
  if s == 'r' then
    prev = n
  else
    if fp ~= ARGV[1] then return {4} end
    if s == 'c' then return {3, '', 0, string.sub(v, ro)} end
    local t = now()
    if l > t then return {2, n, l - t} end
    n = n + 1
    redis.call('SET', KEYS[i], enc(i, 'p', n, t + tonumber(ARGV[2]), t, ARGV[1]), 'PX', ARGV[3])
    return {1, n, 1}
  end
else
  i = tonumber(ARGV[4])
end
local t = now()
local n = math.max(prev + 1, t)
redis.call('SET', KEYS[i], enc(i, 'p', n, t + tonumber(ARGV[2]), t, ARGV[1]), 'PX', ARGV[3])
return {1, n, 0}
`)

// completeScript: ARGV = fence, result, retention ms, notify mode.
// Returns 1 done, 0 lease lost (nothing changed).
var completeScript = redis.NewScript(luaCommon + luaHeld + luaPublish + `
local i, n, a, fp = held()
if not i then return 0 end
redis.call('SET', KEYS[i], enc(i, 'c', n, 0, a, fp, ARGV[2]), 'PX', ARGV[3])
notify(i, ARGV[4])
return 1
`)

// releaseScript: ARGV = fence, notify mode. Returns 1 done, 0 lease lost.
//
// The record is deleted, except when the server clock has not yet left the
// millisecond the fence falls in: then a tombstone keeps the fence until it
// has, so that the next fresh fence (max(previous+1, now) from a script, or
// the millisecond of its creation from a native Begin) is still larger than
// this one.
var releaseScript = redis.NewScript(luaCommon + luaHeld + luaPublish + `
local i, n = held()
if not i then return 0 end
local t = now()
local b = (math.floor(n / 1000) + 1) * 1000
if b > t then
  redis.call('SET', KEYS[i], enc(i, 'r', n, 0, 0, ''), 'PX', math.floor((b - t) / 1000) + 2)
else
  redis.call('DEL', KEYS[i])
end
notify(i, ARGV[2])
return 1
`)

// extendScript: ARGV = fence, lease µs, in-progress key TTL ms.
// Returns 1 done, 0 lease lost. The record is written whole, so that a
// native record ("N", whose times come from its expiry) becomes a "P" with
// the same fence before its expiry moves.
var extendScript = redis.NewScript(luaCommon + luaHeld + `
local i, n, a, fp = held()
if not i then return 0 end
redis.call('SET', KEYS[i], enc(i, 'p', n, now() + tonumber(ARGV[2]), a, fp), 'PX', ARGV[3])
return 1
`)

// getScript: no ARGV. Returns {0} for no record, else
// {state, fp, fence, lease end µs, acquired µs, result, now µs, pttl ms}.
var getScript = redis.NewScript(luaCommon + `
local i, v = load()
if not v then return {0} end
local s, n, l, a, fp, ro = dec(v, i)
if s ~= 'p' and s ~= 'c' then return {0} end
return {s, fp, num(n), num(l), num(a), string.sub(v, ro), num(now()), redis.call('PTTL', KEYS[i])}
`)

// abortScript: ARGV = fence, notify mode. It deletes the "N" record under
// KEYS[1] that a native Begin wrote with that fence, and nothing else: the
// native Begin found a record under the legacy name too, which the scripts
// then act on (load() prefers it). No tombstone is needed: the fence was
// never handed out. Returns 1 deleted, 0 not found.
var abortScript = redis.NewScript(luaPublish + `
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, 1) ~= 'N' then return 0 end
local _, ttl = struct.unpack('>c1d', v)
if (redis.call('PEXPIRETIME', KEYS[1]) - ttl) * 1000 ~= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
notify1(ARGV[2], KEYS[1])
return 1
`)
