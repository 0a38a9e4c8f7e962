local ok, n = pcall(redis.call, 'INCRBY', KEYS[1], ARGV[1])
if not ok then
  if type(n) == 'table' and n.err then return {3, n.err} end
  return {3, tostring(n)}
end
if ARGV[2] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return {1, n}
