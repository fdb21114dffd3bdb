-- Raise a revocation cutoff (one subject's, or the global one). It only ever moves forward, so two
-- admins revoking at once, or a replayed request, can never bring revoked tokens back.
-- KEYS[1] cutoff STRING, KEYS[2] index ZSET, KEYS[3] expiries ZSET, KEYS[4] entries HASH
-- ARGV[1] cutoff T (unix s), ARGV[2] expire-at (unix s), ARGV[3] entry JSON describing T
-- Returns {cutoff in force afterwards, 1 if this call raised it else 0}.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted = tonumber(ARGV[1])
if wanted > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[2])
  redis.call('ZADD', KEYS[2], 0, KEYS[1])
  redis.call('ZADD', KEYS[3], ARGV[2], KEYS[1])
  redis.call('HSET', KEYS[4], KEYS[1], ARGV[3])
  return {wanted, 1}
end
redis.call('EXPIREAT', KEYS[1], ARGV[2], 'GT')
redis.call('ZADD', KEYS[3], 'GT', ARGV[2], KEYS[1])
return {current, 0}
