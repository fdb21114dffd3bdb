-- Shared by every index script; each script's own header gives its KEYS/ARGV.
-- KEYS: [1] event marker, [2] live tags ZSET, [3] tag records HASH, [4] digest->tags lex ZSET,
--       [5] live manifests ZSET, [6] manifest records HASH, [7] tombstones ZSET
-- ARGV[1] marker TTL s, ARGV[2] tombstone TTL s, ARGV[3] now (unix s); op arguments follow.
-- Clocks are event timestamps in integer microseconds, kept as strings (cjson would round them).
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local now, tomb_ttl = tonumber(ARGV[3]), tonumber(ARGV[2])

local function load(h, field)
  local raw = redis.call('HGET', h, field)
  if raw then return cjson.decode(raw) end
  return {}
end
local function save(h, field, rec) redis.call('HSET', h, field, cjson.encode(rec)) end
local function num(v) return tonumber(v or '0') or 0 end
local function bury(member) redis.call('ZADD', KEYS[7], now + tomb_ttl, member) end
local function unbury(member) redis.call('ZREM', KEYS[7], member) end

-- Forget a bounded number of expired tombstones, unless the record came back to life.
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now, 'LIMIT', 0, 16)) do
  local name = string.sub(member, 3)
  if string.sub(member, 1, 1) == 't' then
    if not redis.call('ZSCORE', KEYS[2], name) then redis.call('HDEL', KEYS[3], name) end
  elseif not redis.call('ZSCORE', KEYS[5], name) then
    redis.call('HDEL', KEYS[6], name)
  end
  redis.call('ZREM', KEYS[7], member)
end

-- Record a push of manifest `digest` at clock `ts`; returns its record.
local function touch_manifest(digest, ts, media_type, size, refs)
  local m = load(KEYS[6], digest)
  if num(ts) > num(m.ts) then
    m.ts = ts
    if media_type ~= '' then m.mt = media_type end
    if size ~= '' then m.sz = size end
    if refs ~= '' then m.refs = refs end
  else
    if m.mt == nil and media_type ~= '' then m.mt = media_type end
    if m.sz == nil and size ~= '' then m.sz = size end
    if m.refs == nil and refs ~= '' then m.refs = refs end
  end
  save(KEYS[6], digest, m)
  if num(m.ts) > num(m.del) then
    redis.call('ZADD', KEYS[5], m.ts, digest)
    unbury('m:' .. digest)
  else
    redis.call('ZREM', KEYS[5], digest)
    bury('m:' .. digest)
  end
  return m
end

-- A tag's last pull: the newest pull of the digest it names now, made since that push (a pull of the image
-- it named before, or of an earlier life of the tag, does not count). `pulls` keeps the newest pull per
-- digest; one older than the tag's push can never count again and is dropped, so the table stays small,
-- and the answer depends only on the final push, whatever the order of delivery.
-- A record written before `pulls` existed: its `pulled` was of the digest it names.
local function adopt_pulls(r)
  if r.pulls == nil and r.pulled and r.d then r.pulls = {[r.d] = r.pulled} end
end
local function settle_pulls(r)
  local pulls, best = r.pulls or {}, nil
  for d, t in pairs(pulls) do
    if num(t) < num(r.ts) then pulls[d] = nil end
  end
  if r.d and pulls[r.d] then best = pulls[r.d] end
  if next(pulls) == nil then pulls = nil end
  r.pulls, r.pulled = pulls, best
end

-- Take a tag out of the live set (its record stays as a tombstone).
local function kill_tag(tag, digest)
  redis.call('ZREM', KEYS[2], tag)
  if digest then redis.call('ZREM', KEYS[4], digest .. ' ' .. tag) end
  bury('t:' .. tag)
end

local function done()
  redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
  return 1
end
