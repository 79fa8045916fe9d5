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

-- done(): the WRKJSON summary line, shared by the wrk scripts beside this one
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "wrk_summary.lua")
