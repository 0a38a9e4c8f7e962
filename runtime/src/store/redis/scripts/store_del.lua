return {1, redis.call('DEL', KEYS[1])}
