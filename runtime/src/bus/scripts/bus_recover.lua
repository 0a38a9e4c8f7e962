-- KEYS: an instance's alive key, its two lists of batches of the host's
-- list, its two lists of batches of its replies, its list of replies, the
-- host's list, the host's set of readers. ARGV: the instance, how long the
-- host's list is kept.
-- If the instance is not alive, puts what its batches hold back at the
-- head of the host's list, in order, deletes its lists and forgets it.
-- Answers how many frames it put back, or -1 if the instance is alive.
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local n = 0
for k = 3, 2, -1 do
  local items = redis.call('LRANGE', KEYS[k], 0, -1)
  for i = #items, 1, -1 do
    redis.call('LPUSH', KEYS[7], items[i])
  end
  n = n + #items
end
if n > 0 then redis.call('PEXPIRE', KEYS[7], ARGV[2]) end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
redis.call('SREM', KEYS[8], ARGV[1])
return n
