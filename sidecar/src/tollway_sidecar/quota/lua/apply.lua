-- Add counts kept while the store was unreachable (FailOpen), once: the batch mark makes a retried
-- batch change nothing.
-- KEYS[1] the batch mark, KEYS[2..] the counters.
-- ARGV[1] increments, then 4 per increment: counter index in KEYS, field, amount, counter ttl (ms;
-- 0: never expires; applied only to a counter that has no expiry yet); then the count of usage
-- events, the stream field, the stream's approximate length cap and the events' JSON, appended to the stream KEYS[#KEYS] with the counts
-- (a retried batch appends none).
-- Returns 1 when applied, 0 when this batch had been applied before.
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', 86400000) then
  return 0
end
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  local b = 2 + i * 4
  local key = KEYS[tonumber(ARGV[b])]
  redis.call('HINCRBY', key, ARGV[b + 1], ARGV[b + 2])
  local ttl = tonumber(ARGV[b + 3])
  if ttl > 0 and redis.call('PTTL', key) == -1 then
    redis.call('PEXPIRE', key, ttl)
  end
end
local e = 2 + n * 4
local events = tonumber(ARGV[e] or '0')
for i = 1, events do
  redis.call('XADD', KEYS[#KEYS], 'MAXLEN', '~', ARGV[e + 2], '*', ARGV[e + 1], ARGV[e + 2 + i])
end
return 1
