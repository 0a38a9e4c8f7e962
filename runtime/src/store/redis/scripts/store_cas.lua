local cur = redis.call('GET', KEYS[1])
local match
if ARGV[1] == '1' then match = (cur == ARGV[2]) else match = (cur == false) end
if match then
  if ARGV[3] == '1' then
    if ARGV[5] ~= '0' then
      redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
    else
      redis.call('SET', KEYS[1], ARGV[4])
    end
  else
    redis.call('DEL', KEYS[1])
  end
  return {1, 1}
end
if cur and ARGV[5] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
return {1, 0}
