-- A manifest fetched with GET. ARGV[4] tag ('' when pulled by digest), [5] digest, [6] clock.
-- last_pulled_at only moves forward, so any order gives the same answer.
local tag, digest, ts = ARGV[4], ARGV[5], ARGV[6]
local function pulled(h, live, field, prefix)
  local rec = load(h, field)
  if num(ts) > num(rec.pulled) then
    rec.pulled = ts
    save(h, field, rec)
  end
  if not redis.call('ZSCORE', live, field) then
    redis.call('ZADD', KEYS[7], 'NX', now + tomb_ttl, prefix .. field)
  end
end
if tag ~= '' then pulled(KEYS[3], KEYS[2], tag, 't:') end
pulled(KEYS[6], KEYS[5], digest, 'm:')
return done()
