-- The summary every wrk script of benchmarks/ prints, one line "WRKJSON {...}": requests,
-- req/s, latency percentiles in microseconds, and wrk's error counts (status = non-2xx/3xx
-- answers; the rest are socket errors). Loaded with dofile by wrk_post.lua, wrk_peers.lua
-- and wrk_scan.lua; WRK_TAG is copied into it.
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
