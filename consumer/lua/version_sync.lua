-- Make the version index agree with the tag index for the given tags.
-- KEYS: [1] live tags ZSET of the repository, [2] its version index (lex ZSET, all scores 0)
-- ARGV: pairs of (tag, member) where member is "<Version.sort_key> <tag>".
-- Atomic so that concurrent pushes and deletes of one tag cannot leave a member behind its tag:
-- whichever sync runs last sees the tag index's final state.
local changed = 0
for i = 1, #ARGV, 2 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    changed = changed + redis.call('ZADD', KEYS[2], 0, ARGV[i + 1])
  else
    changed = changed + redis.call('ZREM', KEYS[2], ARGV[i + 1])
  end
end
return changed
