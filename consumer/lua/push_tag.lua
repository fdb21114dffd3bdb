-- A manifest pushed with a tag. ARGV[4] tag, [5] digest, [6] clock, [7] media type, [8] size,
-- [9] actor, [10] references (JSON list, '' if none). Last writer by clock wins; ties go to the
-- larger digest so every delivery order converges.
local tag, digest, ts = ARGV[4], ARGV[5], ARGV[6]
local m = touch_manifest(digest, ts, ARGV[7], ARGV[8], ARGV[10])
local r = load(KEYS[3], tag)
adopt_pulls(r)
local cur = num(r.ts)
if num(ts) > cur or (num(ts) == cur and digest > (r.d or '')) then
  local old = r.d
  r.ts, r.d, r.mt, r.sz, r.actor = ts, digest, ARGV[7], ARGV[8], ARGV[9]
  settle_pulls(r)
  save(KEYS[3], tag, r)
  if old and old ~= digest then redis.call('ZREM', KEYS[4], old .. ' ' .. tag) end
  if num(ts) > num(r.del) and num(ts) > num(m.del) then
    redis.call('ZADD', KEYS[2], ts, tag)
    redis.call('ZADD', KEYS[4], 0, digest .. ' ' .. tag)
    unbury('t:' .. tag)
  else
    kill_tag(tag, digest)
  end
end
return done()
