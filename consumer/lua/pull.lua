-- A manifest fetched with GET. ARGV[4] tag ('' when pulled by digest), [5] digest, [6] clock.
-- last_pulled_at only moves forward, so any order gives the same answer; a tag's counts only pulls of the
-- image it names now, made since it was pushed (settle_pulls).
local tag, digest, ts = ARGV[4], ARGV[5], ARGV[6]
local function bury_if_dead(live, field, prefix)
  if not redis.call('ZSCORE', live, field) then
    redis.call('ZADD', KEYS[7], 'NX', now + tomb_ttl, prefix .. field)
  end
end
if tag ~= '' then
  local r = load(KEYS[3], tag)
  adopt_pulls(r)
  r.pulls = r.pulls or {}
  if num(ts) > num(r.pulls[digest]) then r.pulls[digest] = ts end
  settle_pulls(r)
  save(KEYS[3], tag, r)
  bury_if_dead(KEYS[2], tag, 't:')
end
local m = load(KEYS[6], digest)
if num(ts) > num(m.pulled) then
  m.pulled = ts
  save(KEYS[6], digest, m)
end
bury_if_dead(KEYS[5], digest, 'm:')
return done()
