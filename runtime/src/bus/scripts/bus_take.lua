-- KEYS: a host's list, the reader's list for this batch. ARGV: most
-- frames, most bytes (at least one frame is taken). Moves frames from the
-- head of the host's list to the reader's, and answers them.
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local n, size = 0, 0
for i, item in ipairs(items) do
  n = i
  size = size + #item
  if size >= tonumber(ARGV[2]) then break end
end
if n == 0 then return {} end
redis.call('LTRIM', KEYS[1], n, -1)
redis.call('RPUSH', KEYS[2], unpack(items, 1, n))
if n < #items then
  local taken = {}
  for i = 1, n do taken[i] = items[i] end
  return taken
end
return items
