-- A manifest deleted by digest: it and every tag whose push is not newer than the delete go.
-- ARGV[4] digest, [5] clock. The newest delete records the tags it removed as m.gone (space-separated),
-- for listeners that judge the delete after the live set has lost them.
local digest, ts = ARGV[4], ARGV[5]
local m = load(KEYS[6], digest)
local newest = num(ts) > num(m.del)
if newest then m.del = ts end
if num(m.ts) <= num(m.del) then
  redis.call('ZREM', KEYS[5], digest)
  bury('m:' .. digest)
end
local gone = {}
local members = redis.call('ZRANGEBYLEX', KEYS[4], '[' .. digest .. ' ', '(' .. digest .. '!')
for _, member in ipairs(members) do
  local tag = string.sub(member, #digest + 2)
  if num(redis.call('ZSCORE', KEYS[2], tag)) <= num(ts) then
    kill_tag(tag, digest)
    gone[#gone + 1] = tag
  end
end
if newest then
  m.gone = table.concat(gone, ' ')
  save(KEYS[6], digest, m)
end
return done()
