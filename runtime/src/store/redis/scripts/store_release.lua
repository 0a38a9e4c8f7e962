-- KEYS: value, lock. ARGV: token, change ('s' set, 'd' delete, 'k' keep),
-- new value, time to live ms ('0': none).
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {0, 0} end
redis.call('DEL', KEYS[2])
if ARGV[2] == 's' then
  if ARGV[4] ~= '0' then
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  else
    redis.call('SET', KEYS[1], ARGV[3])
  end
elseif ARGV[2] == 'd' then
  redis.call('DEL', KEYS[1])
elseif redis.call('TYPE', KEYS[1]).ok == 'hash' then
  -- Keep: the value comes back out of the lock's hash.
  local v = redis.call('HGET', KEYS[1], 'v')
  redis.call('DEL', KEYS[1])
  if v then
    if ARGV[4] ~= '0' then
      redis.call('SET', KEYS[1], v, 'PX', ARGV[4])
    else
      redis.call('SET', KEYS[1], v)
    end
  end
end
redis.call('PUBLISH', KEYS[2], '')
return {1, 0}
