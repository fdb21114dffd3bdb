-- A manifest pushed by digest (index children, push by digest). ARGV[4] digest, [5] clock,
-- [6] media type, [7] size, [8] references (JSON list, '' if none).
touch_manifest(ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
return done()
