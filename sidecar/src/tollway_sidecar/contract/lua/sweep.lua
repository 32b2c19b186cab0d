-- Shared by every script (prepended to each): expire due reservations of one namespace.
-- A reservation record is a JSON array [rsv, on_expiry]; each item is [key, field, amount] with the
-- amount as a decimal string (Lua numbers are doubles: strings keep integers exact in HINCRBY).
-- Expiry takes the amount out of `reserved` and leaves `used`, so the call stays charged at its
-- estimate; `on_expiry` adds the estimated tokens to the key's tally. Counters that no longer exist
-- (their window is over) are left alone.
-- Add each [key, field, amount] item to its counter (`sign` '-' takes it out); counters that no
-- longer exist are left alone. Settling a reservation releases its `rsv` items the same way.
local function apply_items(items, sign)
  for _, item in ipairs(items) do
    if item[3] ~= '0' and redis.call('EXISTS', item[1]) == 1 then
      redis.call('HINCRBY', item[1], item[2], sign .. item[3])
    end
  end
end

local function sweep(index, rprefix, now, limit)
  local due = redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, limit)
  for _, rid in ipairs(due) do
    local rkey = rprefix .. rid
    local raw = redis.call('GET', rkey)
    if raw then
      local record = cjson.decode(raw)
      apply_items(record[1], '-')
      apply_items(record[2], '')
      redis.call('DEL', rkey)
    end
    redis.call('ZREM', index, rid)
  end
  return #due
end
