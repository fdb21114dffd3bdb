-- wrk script: POST one real-shaped registry event per request, each with its own event id, request
-- id, tag and digest, so every request is new work for the index (no dedup short-cut, growing index).
-- Arguments after `--`: <template file> <bearer token> <run number>
--   template: an envelope with the placeholders @EVENT_ID@ @REQUEST_ID@ @TAG@ @DIGEST@
--             (bench/webhook_bench.py writes it from a real registry 2.8.2 envelope)
--   run number: 0..65535, distinct per wrk invocation so warm-up and measured ids never collide.
-- done() prints one line `WRK_RESULT {json}` (latencies in microseconds) for the bench to parse.

local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_no", thread_count)
end

local template, headers, run
local counter = 0

function init(args)
  local f = assert(io.open(args[1], "rb"))
  template = f:read("*a")
  f:close()
  headers = {
    ["Authorization"] = "Bearer " .. args[2],
    ["Content-Type"] = "application/vnd.docker.distribution.events.v1+json",
    ["User-Agent"] = "Go-http-client/1.1",
  }
  run = tonumber(args[3])
end

function request()
  counter = counter + 1
  -- 12 hex digits that no other request of this bench run uses: run, thread, counter.
  local unique = string.format("%04x%02x%06x", run, thread_no, counter)
  local values = {
    EVENT_ID = "be7c0000-0000-4000-8000-" .. unique,
    REQUEST_ID = "be7c0000-0000-4000-9000-" .. unique,
    TAG = "1.0-" .. unique,
    DIGEST = "sha256:bbb5f71a42c4574ea1e0e8688aaf56e3171201962716ff224fe4" .. unique,
  }
  local body = template:gsub("@([%u_]+)@", values)
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %.0f, "p90_us": %.0f, '
      .. '"p99_us": %.0f, "max_us": %.0f, "mean_us": %.1f, "errors": {"connect": %d, "read": %d, '
      .. '"write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
