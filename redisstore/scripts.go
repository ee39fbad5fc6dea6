package redisstore

import "github.com/redis/go-redis/v9"

// The Lua scripts below are the whole server-side state machine (SPEC §2).
// Each runs atomically on the server that owns KEYS[1]; every key a script
// touches is KEYS[1], and the notification channel has the same name (pub/sub
// channels and keys are separate namespaces), so all of them hash to one
// Redis Cluster slot.
//
// A record is a hash with the fields:
//
//	s  state: "p" in progress, "c" completed, "r" released tombstone
//	f  fingerprint (bytes)
//	n  fence, decimal
//	l  lease end, server clock in µs since the Unix epoch (meaningful while
//	   in progress only)
//	a  when the current fence acquired the record, µs since the Unix epoch
//	r  result (completed only)
//
// Times come from the server's TIME, never from the client. Numbers stay
// below 2^53 (µs timestamps until the year 2255), so Lua's doubles hold them
// exactly; they are formatted with %.0f, which never uses an exponent. Fences
// are compared as the decimal strings the scripts wrote, so the comparison is
// exact.
//
// Redis replicates the effects of scripts (always since 7.0, by default
// since 5.0), so calling TIME before writing is allowed and replicas store
// the deadlines the primary computed.

// luaClock defines now(), the server clock in µs, and num(), which formats
// an integer without exponent.
const luaClock = `
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function num(x) return string.format('%.0f', x) end
`

// luaPublish wakes waiters (ARGV[mode] is "p" for PUBLISH, "s" for the
// sharded SPUBLISH of Redis Cluster 7, anything else for no notification).
const luaPublish = `
local function notify(mode)
  if mode == 'p' then redis.call('PUBLISH', KEYS[1], 'x')
  elseif mode == 's' then redis.call('SPUBLISH', KEYS[1], 'x') end
end
`

// beginScript: ARGV = fingerprint, lease µs, in-progress key TTL ms.
// Returns {1, fence, takeover 0|1} acquired, {2, fence, lease left µs}
// in flight, {3, "", 0, result} replay, {4} mismatch.
var beginScript = redis.NewScript(luaClock + `
local h = redis.call('HMGET', KEYS[1], 's', 'f', 'n', 'l', 'r')
local s = h[1]
local prev = 0
if s == 'p' or s == 'c' then
  if h[2] ~= ARGV[1] then return {4} end
  if s == 'c' then return {3, '', 0, h[5] or ''} end
  local t = now()
  local left = tonumber(h[4]) - t
  if left > 0 then return {2, h[3], left} end
  local fence = num(tonumber(h[3]) + 1)
  redis.call('HSET', KEYS[1], 'n', fence, 'l', num(t + tonumber(ARGV[2])), 'a', num(t))
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1, fence, 1}
end
if s then
  prev = tonumber(h[3]) or 0
  redis.call('DEL', KEYS[1])
end
local t = now()
local fence = num(math.max(prev + 1, t))
redis.call('HSET', KEYS[1], 's', 'p', 'f', ARGV[1], 'n', fence, 'l', num(t + tonumber(ARGV[2])), 'a', num(t))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, fence, 0}
`)

// completeScript: ARGV = fence, result, retention ms, notify mode.
// Returns 1 done, 0 lease lost (nothing changed).
var completeScript = redis.NewScript(luaPublish + `
local h = redis.call('HMGET', KEYS[1], 's', 'n')
if h[1] ~= 'p' or h[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 's', 'c', 'r', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
notify(ARGV[4])
return 1
`)

// releaseScript: ARGV = fence, notify mode. Returns 1 done, 0 lease lost.
//
// The record is deleted, except when the server clock (µs) has not yet passed
// the fence: then a tombstone keeps the fence until it has, so that the next
// fresh fence, max(previous+1, now), is still larger than this one.
var releaseScript = redis.NewScript(luaClock + luaPublish + `
local h = redis.call('HMGET', KEYS[1], 's', 'n')
if h[1] ~= 'p' or h[2] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
local fence = tonumber(ARGV[1])
local t = now()
if fence >= t then
  redis.call('HSET', KEYS[1], 's', 'r', 'n', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], math.floor((fence - t) / 1000) + 2)
end
notify(ARGV[2])
return 1
`)

// extendScript: ARGV = fence, lease µs, in-progress key TTL ms.
// Returns 1 done, 0 lease lost.
var extendScript = redis.NewScript(luaClock + `
local h = redis.call('HMGET', KEYS[1], 's', 'n')
if h[1] ~= 'p' or h[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'l', num(now() + tonumber(ARGV[2])))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`)

// getScript: no ARGV. Returns {0} for no record, else
// {state, fp, fence, lease end µs, acquired µs, result, now µs, pttl ms}.
var getScript = redis.NewScript(luaClock + `
local h = redis.call('HMGET', KEYS[1], 's', 'f', 'n', 'l', 'a', 'r')
if h[1] ~= 'p' and h[1] ~= 'c' then return {0} end
return {h[1], h[2] or '', h[3] or '0', h[4] or '0', h[5] or '0', h[6] or '', num(now()), redis.call('PTTL', KEYS[1])}
`)
