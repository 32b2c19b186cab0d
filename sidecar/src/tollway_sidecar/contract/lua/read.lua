-- Read counters for /spend, after expiring due reservations so `reserved` is current.
-- KEYS[1] the reservation index, KEYS[2] the usage stream (expired reservations' events),
-- KEYS[3..] the counters.
-- ARGV[1] now (ms), ARGV[2] reservation key prefix, ARGV[3] sweep limit, ARGV[4] the stream's
-- entry field, ARGV[5] its approximate length cap.
-- Returns one flat HGETALL array per counter.
sweep(KEYS[1], ARGV[2], tonumber(ARGV[1]), tonumber(ARGV[3]), KEYS[2], ARGV[4], ARGV[5])
local out = {}
for i = 3, #KEYS do
  out[i - 2] = redis.call('HGETALL', KEYS[i])
end
return out
