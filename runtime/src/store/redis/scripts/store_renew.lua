-- KEYS: value, lock. ARGV: token, lease ms, lease ms + margin.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
-- The hash that stands for a lock on a key without a value lives as long.
if redis.call('TYPE', KEYS[1]).ok == 'hash' and redis.call('HEXISTS', KEYS[1], 'v') == 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
