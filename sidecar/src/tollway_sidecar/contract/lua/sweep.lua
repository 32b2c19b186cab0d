-- Shared by every script (prepended to each): expire due reservations of one namespace.
-- A reservation record is a JSON array [rsv, on_expiry]; each item is [key, field, amount] with the
-- amount as a decimal string (Lua numbers are doubles: strings keep integers exact in HINCRBY).
-- After the array may come a newline and the usage event of the call charged at its estimate (JSON
-- never holds a raw newline): its expiry appends that event to the usage stream, so an expired
-- call has its one event like a settled one (a settle after the expiry finds no record: no second).
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

-- The record's JSON array and its expiry event (nil when it has none).
local function split_record(raw)
  local cut = string.find(raw, '\n', 1, true)
  if cut then
    return string.sub(raw, 1, cut - 1), string.sub(raw, cut + 1)
  end
  return raw, nil
end

-- `stream`, `field`, `maxlen`: the usage stream (a key the calling script declares), its entry
-- field and its approximate length cap.
local function sweep(index, rprefix, now, limit, stream, field, maxlen)
  local due = redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, limit)
  for _, rid in ipairs(due) do
    local rkey = rprefix .. rid
    local raw = redis.call('GET', rkey)
    if raw then
      local items, event = split_record(raw)
      local record = cjson.decode(items)
      apply_items(record[1], '-')
      apply_items(record[2], '')
      if event and event ~= '' then
        redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', field, event)
      end
      redis.call('DEL', rkey)
    end
    redis.call('ZREM', index, rid)
  end
  return #due
end
