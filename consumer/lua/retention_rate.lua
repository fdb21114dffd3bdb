-- The global deletion rate limit: at most one permit per ARGV[1] milliseconds, across all processes.
-- KEYS: [1] STRING, Redis time (ms) before which no permit is free; expires when it has passed
-- ARGV: [1] milliseconds between permits
-- Returns 0 when a permit was taken, else how many milliseconds to wait before asking again.
-- A script because the check and the update must be one step for concurrent workers.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local next_free = tonumber(redis.call('GET', KEYS[1]) or '0')
if next_free > now then return next_free - now end
redis.call('SET', KEYS[1], now + interval, 'PX', interval)
return 0
