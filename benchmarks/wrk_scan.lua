-- wrk script for benchmarks/scan_throughput.py: POST chat requests whose user message differs on every
-- request (a fixed system prompt, then one of a few ordinary questions plus a serial number), so the scan
-- plugin's result cache never answers for the user text and every request pays the full scan.
--   WRK_TAG        copied into the summary
-- The summary line is wrk_summary.lua's "WRKJSON {...}".
local questions = {
  "Could you suggest a three-day walking itinerary for Lisbon in spring, with a cafe for lunch each day?",
  "Write one sentence that explains what an API gateway in front of a large language model does.",
  "How do I read a CSV file with pandas and keep only the rows where the price is above 100?",
  "Draft a polite email to my landlord asking when the heating will be repaired, please keep it short.",
  "What is the difference between a process and a thread, with an example from a web server?",
  "Summarise the main causes of the French revolution in five bullet points for a school project.",
  "Give me a vegetarian dinner recipe with lentils, spinach and rice that takes under thirty minutes.",
  "Explain compound interest to a teenager who just opened a savings account, with numbers.",
}
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function request()
  counter = counter + 1
  local q = questions[(counter % #questions) + 1]
  local body = '{"model":"gpt-4o-mini","temperature":0.2,"max_tokens":128,"messages":[' ..
    '{"role":"system","content":"You are a helpful assistant. Answer briefly and precisely."},' ..
    '{"role":"user","content":"' .. q .. ' (request ' .. counter .. ')"}]}'
  return wrk.format(nil, nil, nil, body)
end

-- done(): the WRKJSON summary line, shared by the wrk scripts beside this one
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "wrk_summary.lua")
