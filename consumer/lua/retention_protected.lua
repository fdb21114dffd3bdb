-- Make a repository's protected-tag sets agree with its tag index for the given tags.
-- KEYS: [1] live tags ZSET (tag -> push us), [2] protected tags ZSET (tag -> push us),
--       [3] protected version members (lex ZSET, all scores 0)
-- ARGV: triples (tag, version index member or '', '1' when the policy protects the tag else '0').
-- Atomic so that a push or delete racing a sync cannot leave the sets behind the tag index.
for i = 1, #ARGV, 3 do
  local tag, member = ARGV[i], ARGV[i + 1]
  local score = redis.call('ZSCORE', KEYS[1], tag)
  if score and ARGV[i + 2] == '1' then
    redis.call('ZADD', KEYS[2], score, tag)
    if member ~= '' then redis.call('ZADD', KEYS[3], 0, member) end
  else
    redis.call('ZREM', KEYS[2], tag)
    if member ~= '' then redis.call('ZREM', KEYS[3], member) end
  end
end
return 0
