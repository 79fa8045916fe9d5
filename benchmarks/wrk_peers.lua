-- wrk script for benchmarks/peers.py: POST a JSON body, optional headers, optionally a
-- different body on every request, optionally stop after N answers; prints the same
-- "WRKJSON {...}" summary as wrk_post.lua.
--   WRK_BODY_FILE   the request body (JSON)
--   WRK_HEADERS     extra headers, "Name: value|Name: value"
--   WRK_UNIQUE=1    replace "#BENCHSEQ" in the body with "WRK_SEED <counter in letters>" on every request
--                   (a cache miss and a scan of new text every time: nothing is served from memory)
--   WRK_SEED        makes the bodies of this wrk run differ from every other run's (letters)
--   WRK_WORDS_FILE  with WRK_UNIQUE=1: also 40 words drawn at random from this file (one a line)
--                   after the counter, so each prompt is varied text, not one sentence and a counter
--   WRK_STOP_AFTER  exit once this many answers came back (one thread: -t1; wrk itself would
--                   wait out -d): prints a WRKJSON line with the answers and non-2xx counted so
--                   far (no latencies; requests still in flight are not counted)
--   WRK_TAG         copied into the summary
local file = assert(io.open(os.getenv("WRK_BODY_FILE"), "rb"))
local body = file:read("*a")
file:close()
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
for pair in string.gmatch(os.getenv("WRK_HEADERS") or "", "[^|]+") do
  local name, value = string.match(pair, "^%s*([^:]+):%s*(.-)%s*$")
  if name then wrk.headers[name] = value end
end

local unique = (os.getenv("WRK_UNIQUE") or "") == "1"
-- The marker is written in letters, as words: a long run of digits would look like a
-- card number and a hex blob to the scan plugin and cost it checks no prompt pays for.
local function letters(n)
  local out = ""
  repeat
    out = string.char(97 + n % 26) .. out
    n = math.floor(n / 26)
  until n == 0
  return out
end
local seed = os.getenv("WRK_SEED") or letters(os.time())
local counter = 0
local head, tail = nil, nil
if unique then
  local at = string.find(body, "#BENCHSEQ", 1, true)
  assert(at, "WRK_UNIQUE=1 needs #BENCHSEQ in the body")
  head, tail = string.sub(body, 1, at - 1), string.sub(body, at + 9)
  local words = {}
  local words_file = os.getenv("WRK_WORDS_FILE") or ""
  if words_file ~= "" then
    for word in io.lines(words_file) do words[#words + 1] = word end
    math.randomseed(os.time())
  end
  local function varied()
    if #words == 0 then return "" end
    local drawn = {}
    for i = 1, 40 do drawn[i] = words[math.random(#words)] end
    return " " .. table.concat(drawn, " ")
  end
  request = function()
    counter = counter + 1
    return wrk.format(nil, nil, nil, head .. seed .. " " .. letters(counter) .. varied() .. tail)
  end
end

local stop_after = tonumber(os.getenv("WRK_STOP_AFTER") or "0")
if stop_after > 0 then
  local answers, bad, started = 0, 0, os.time()
  response = function(status, headers, answer)
    answers = answers + 1
    if status < 200 or status > 399 then bad = bad + 1 end
    if answers >= stop_after then
      local seconds = math.max(os.time() - started, 1)
      io.write(string.format(
        'WRKJSON {"tag":"%s","requests":%d,"seconds":%d,"rps":%.1f,"p50_us":0,"p90_us":0,"p99_us":0,' ..
        '"max_us":0,"mean_us":0,"non2xx":%d,"connect":0,"read":0,"write":0,"timeout":0,"stopped":true}\n',
        os.getenv("WRK_TAG") or "", answers, seconds, answers / seconds, bad))
      io.flush()
      os.exit(0)
    end
  end
end

-- done(): the WRKJSON summary line, shared by the wrk scripts beside this one
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "wrk_summary.lua")
