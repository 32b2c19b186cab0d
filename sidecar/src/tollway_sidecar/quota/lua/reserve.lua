-- Reserve one call against every counter it touches, atomically: all or nothing.
-- KEYS[1] the reservation record, KEYS[2] the namespace's reservation index (zset: rid -> expiry),
-- KEYS[3] the usage stream (the events of the reservations the sweep expires), KEYS[4..] the
-- counters (hashes).
-- ARGV[1] now (ms, the caller's clock), ARGV[2] rid, ARGV[3] reservation ttl (ms),
-- ARGV[4] reservation key prefix, ARGV[5] sweep limit, ARGV[6] the record (JSON, then optionally a
-- newline and the usage event its expiry appends), ARGV[7] the stream's entry field, ARGV[8] its
-- approximate length cap, ARGV[9] lines,
-- then 6 per line: counter index in KEYS, used field, reserved field ('' for none), amount,
-- limit (-1: not checked), counter ttl (ms; 0: never expires).
-- Returns {admitted (1/0), used before the call for each line...}.
local now = tonumber(ARGV[1])
sweep(KEYS[2], ARGV[4], now, tonumber(ARGV[5]), KEYS[3], ARGV[7], ARGV[8])
local lines = tonumber(ARGV[9])
local result = {1}
for i = 0, lines - 1 do
  local b = 10 + i * 6
  local used = tonumber(redis.call('HGET', KEYS[tonumber(ARGV[b])], ARGV[b + 1]) or '0')
  result[i + 2] = used
  local limit = tonumber(ARGV[b + 4])
  if limit >= 0 and used + tonumber(ARGV[b + 3]) > limit then
    result[1] = 0
  end
end
if result[1] == 0 then
  return result
end
for i = 0, lines - 1 do
  local b = 10 + i * 6
  local key = KEYS[tonumber(ARGV[b])]
  redis.call('HINCRBY', key, ARGV[b + 1], ARGV[b + 3])
  if ARGV[b + 2] ~= '' then
    redis.call('HINCRBY', key, ARGV[b + 2], ARGV[b + 3])
  end
  local ttl = tonumber(ARGV[b + 5])
  if ttl > 0 then
    redis.call('PEXPIRE', key, ttl)
  end
end
local ttl = tonumber(ARGV[3])
-- The record outlives its expiry by a day, so the sweep still finds it after a quiet spell.
redis.call('SET', KEYS[1], ARGV[6], 'PX', ttl + 86400000)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[2], ttl + 86400000)
return result
