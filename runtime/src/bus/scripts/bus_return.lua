-- KEYS: a reader's list for its batch in hand, its list for the batch
-- before (delivered), the host's list. ARGV: how many frames at the head of
-- the batch in hand were delivered, how long the host's list is kept.
-- Puts the undelivered frames back at the head of the host's list, in
-- order, and deletes both of the reader's lists.
local items = redis.call('LRANGE', KEYS[1], tonumber(ARGV[1]), -1)
for i = #items, 1, -1 do
  redis.call('LPUSH', KEYS[3], items[i])
end
if #items > 0 then redis.call('PEXPIRE', KEYS[3], ARGV[2]) end
redis.call('DEL', KEYS[1], KEYS[2])
return #items
