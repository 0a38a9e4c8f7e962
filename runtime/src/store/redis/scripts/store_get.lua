local v = redis.call('GET', KEYS[1])
if not v then return {1, 0} end
if ARGV[1] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {2, v}
