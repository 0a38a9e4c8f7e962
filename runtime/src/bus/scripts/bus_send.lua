local n = redis.call('GET', KEYS[1])
if not n then return {1, 0} end
n = tonumber(n)
if tonumber(ARGV[1]) >= n then return {2, n} end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[2]) then return {3, n} end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {0, n}
