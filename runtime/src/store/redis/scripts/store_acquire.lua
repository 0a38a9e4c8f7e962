if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0, 0} end
redis.call('PERSIST', KEYS[1])
local v = redis.call('GET', KEYS[1])
if v then return {2, v} end
return {1, 0}
