-- KEYS: a host's list, the reader's list for this batch. ARGV: most
-- frames, most bytes (at least one frame is taken). Moves frames from the
-- head of the host's list to the reader's, and answers them.
local most = tonumber(ARGV[1])
-- No room: take nothing (LRANGE 0 -1 would take the whole list).
if most == nil or most <= 0 then return {} end
local items = redis.call('LRANGE', KEYS[1], 0, most - 1)
local n, size = 0, 0
for i, item in ipairs(items) do
  n = i
  size = size + #item
  if size >= tonumber(ARGV[2]) then break end
end
if n == 0 then return {} end
-- Copy first, then trim (a script's writes are not rolled back), in
-- chunks that unpack can take.
for i = 1, n, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(items, i, math.min(i + 999, n)))
end
redis.call('LTRIM', KEYS[1], n, -1)
if n < #items then
  local taken = {}
  for i = 1, n do taken[i] = items[i] end
  return taken
end
return items
