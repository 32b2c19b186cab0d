-- Settle one reservation: replace what it reserved with what the call used. Idempotent: a
-- reservation that is unknown, already settled, or past its expiry changes nothing (an expired one
-- stays charged at its estimate).
-- KEYS[1] the reservation record, KEYS[2] the reservation index, KEYS[3..] the counters.
-- ARGV[1] now (ms), ARGV[2] rid, ARGV[3] reservation key prefix, ARGV[4] sweep limit,
-- ARGV[5] increments, then 3 per increment: counter index in KEYS, field, amount (actual - reserved
-- for used fields; the tallies); then, optionally, the usage event's JSON, its stream field and the
-- stream's approximate length cap:
-- the event is appended to the stream KEYS[#KEYS] only when the reservation is settled here, so
-- the counters and the outbox never disagree and a retried settle adds no second event.
-- Returns 1 when the reservation was settled, 0 otherwise.
local now = tonumber(ARGV[1])
local applied = 0
local raw = redis.call('GET', KEYS[1])
local expiry = redis.call('ZSCORE', KEYS[2], ARGV[2])
if raw and expiry and tonumber(expiry) > now then
  apply_items(cjson.decode(raw)[1], '-')
  local n = tonumber(ARGV[5])
  for i = 0, n - 1 do
    local b = 6 + i * 3
    local key = KEYS[tonumber(ARGV[b])]
    if redis.call('EXISTS', key) == 1 then
      redis.call('HINCRBY', key, ARGV[b + 1], ARGV[b + 2])
    end
  end
  local event = ARGV[6 + n * 3]
  if event and event ~= '' then
    redis.call('XADD', KEYS[#KEYS], 'MAXLEN', '~', ARGV[8 + n * 3], '*', ARGV[7 + n * 3], event)
  end
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  applied = 1
end
sweep(KEYS[2], ARGV[3], now, tonumber(ARGV[4]))
return applied
