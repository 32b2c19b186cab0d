-- Settle one reservation: replace what it reserved with what the call used. Idempotent: a
-- reservation that is unknown, already settled, or past its expiry changes nothing (an expired one
-- stays charged at its estimate, and its expiry, not this settle, appends the call's event).
-- KEYS[1] the reservation record, KEYS[2] the reservation index, KEYS[3] the usage stream,
-- KEYS[4..] the counters.
-- ARGV[1] now (ms), ARGV[2] rid, ARGV[3] reservation key prefix, ARGV[4] sweep limit,
-- ARGV[5] the stream's entry field, ARGV[6] its approximate length cap, ARGV[7] the usage event's
-- JSON ('' for none), ARGV[8] increments, then 3 per increment: counter index in KEYS, field,
-- amount (actual - reserved for used fields; the tallies).
-- The event is appended to the stream only when the reservation is settled here, so the counters
-- and the outbox never disagree and a retried settle adds no second event.
-- Returns 1 when the reservation was settled, 0 otherwise.
local now = tonumber(ARGV[1])
local applied = 0
local raw = redis.call('GET', KEYS[1])
local expiry = redis.call('ZSCORE', KEYS[2], ARGV[2])
if raw and expiry and tonumber(expiry) > now then
  local items = split_record(raw)
  apply_items(cjson.decode(items)[1], '-')
  local n = tonumber(ARGV[8])
  for i = 0, n - 1 do
    local b = 9 + i * 3
    local key = KEYS[tonumber(ARGV[b])]
    if redis.call('EXISTS', key) == 1 then
      redis.call('HINCRBY', key, ARGV[b + 1], ARGV[b + 2])
    end
  end
  if ARGV[7] ~= '' then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', ARGV[5], ARGV[7])
  end
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  applied = 1
end
sweep(KEYS[2], ARGV[3], now, tonumber(ARGV[4]), KEYS[3], ARGV[5], ARGV[6])
return applied
