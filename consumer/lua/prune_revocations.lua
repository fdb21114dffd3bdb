-- Forget the list entries of revocations whose key has lapsed. Atomic, so an entry renewed meanwhile
-- (a cutoff raised again) is never dropped from the list while its key lives.
-- KEYS[1] expiries ZSET, KEYS[2] index ZSET, KEYS[3] entries HASH
-- ARGV[1] now (unix s), ARGV[2] most entries to forget in this call
-- Returns how many entries were forgotten.
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
  redis.call('HDEL', KEYS[3], unpack(gone))
end
return #gone
