-- wrk script for the benchmark: POST with a body and headers, and an X-Unit-Id per the mode.
-- Settings come from the environment (bench/wrk.py sets them):
--   BENCH_BODY       the request body
--   BENCH_HEADERS    "Name: value" lines, newline-separated (Authorization, Content-Type, ...)
--   BENCH_UNIT_MODE  "fixed": the same X-Unit-Id (BENCH_UNIT_ID) on every request (a static request);
--                    "new":   a distinct X-Unit-Id per request, BENCH_UNIT_ID-<thread>-<counter>;
--                    "none":  no X-Unit-Id
-- wrk decides static vs per-request from whether `request` exists after loading this file, so the
-- function is defined at the top level, and only in "new" mode.

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or ""
for line in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^\n]+") do
  local name, value = string.match(line, "^([^:]+):%s*(.-)%s*$")
  if name then
    wrk.headers[name] = value
  end
end

local mode = os.getenv("BENCH_UNIT_MODE") or "none"
local unit = os.getenv("BENCH_UNIT_ID") or "bench-unit"
if mode == "fixed" then
  wrk.headers["X-Unit-Id"] = unit
end

local threads = 0
function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

if mode == "new" then
  local counter = 0
  function request()
    counter = counter + 1
    wrk.headers["X-Unit-Id"] = unit .. "-" .. tostring(thread_id) .. "-" .. tostring(counter)
    return wrk.format()
  end
end
