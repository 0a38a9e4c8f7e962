-- KEYS: value, lock. ARGV: token, lease ms, lease ms + margin.
-- While a key is locked its value key holds a hash ('l', and 'v': the
-- value, if any), so that a plain GET, SET ... GET, GETDEL or INCRBY of
-- an unlocked-key operation fails on it (WRONGTYPE) instead of bypassing
-- the lock; the hash of a key without a value lives a margin longer than
-- the lease, and a hash left by a lock whose lease ran out is turned back
-- into the value by the next script that meets it.
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0, 0} end
local t = redis.call('TYPE', KEYS[1]).ok
local v = false
if t == 'hash' then
  v = redis.call('HGET', KEYS[1], 'v')
elseif t == 'string' then
  v = redis.call('GET', KEYS[1])
end
redis.call('DEL', KEYS[1])
if v then
  redis.call('HSET', KEYS[1], 'l', '1', 'v', v)
  return {2, v}
end
redis.call('HSET', KEYS[1], 'l', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, 0}
