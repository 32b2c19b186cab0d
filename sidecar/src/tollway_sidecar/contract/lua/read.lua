-- Read counters for /spend, after expiring due reservations so `reserved` is current.
-- KEYS[1] the reservation index, KEYS[2..] the counters.
-- ARGV[1] now (ms), ARGV[2] reservation key prefix, ARGV[3] sweep limit.
-- Returns one flat HGETALL array per counter.
sweep(KEYS[1], ARGV[2], tonumber(ARGV[1]), tonumber(ARGV[3]))
local out = {}
for i = 2, #KEYS do
  out[i - 1] = redis.call('HGETALL', KEYS[i])
end
return out
