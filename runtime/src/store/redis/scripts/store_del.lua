if redis.call('EXISTS', KEYS[2]) == 1 then return {0, 0} end
return {1, redis.call('DEL', KEYS[1])}
