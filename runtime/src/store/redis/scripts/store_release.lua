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
elseif ARGV[4] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
redis.call('PUBLISH', KEYS[2], '')
return {1, 0}
