-- An event that changes nothing in the index (blob, mount, HEAD): only its dedup marker is written,
-- so duplicates are still counted as such. No op arguments.
return done()
