-- KEYS: value, lock. The start of every script of an operation on an
-- unlocked key: answers "locked" while the lock key is there, and turns
-- the hash a lock whose lease ran out left on the value key back into the
-- value (see store_acquire.lua).
if redis.call('EXISTS', KEYS[2]) == 1 then return {0, 0} end
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  local held = redis.call('HGET', KEYS[1], 'v')
  redis.call('DEL', KEYS[1])
  if held then redis.call('SET', KEYS[1], held) end
end
