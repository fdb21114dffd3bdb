-- A tag deleted (registry 3.x tag delete, or one of the per-tag events of a digest delete).
-- ARGV[4] tag, [5] clock. The delete wins over any push with a clock not newer than it.
local tag, ts = ARGV[4], ARGV[5]
local r = load(KEYS[3], tag)
if num(ts) > num(r.del) then
  r.del = ts
  save(KEYS[3], tag, r)
end
if num(r.ts) <= num(r.del) then kill_tag(tag, r.d) end
return done()
