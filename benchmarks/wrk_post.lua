-- wrk script for benchmarks/overhead.py: POST one JSON body, print a JSON summary.
--   WRK_BODY_FILE  the request body (JSON) to POST on every request
--   WRK_TAG        copied into the summary (target, concurrency, round)
-- The summary is one line, "WRKJSON {...}": requests, req/s, latency percentiles in
-- microseconds, and wrk's error counts (status = non-2xx/3xx answers; the rest are
-- socket errors).
local file = assert(io.open(os.getenv("WRK_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local errors = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    'WRKJSON {"tag":"%s","requests":%d,"seconds":%.3f,"rps":%.1f,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"non2xx":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d}\n',
    os.getenv("WRK_TAG") or "", summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    errors.status, errors.connect, errors.read, errors.write, errors.timeout))
end
