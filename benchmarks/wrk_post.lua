-- POST the JSON body in $WRK_BODY_FILE; at the end print one JSON line for benchmarks/serving.py.
-- With $WRK_PATHS_FILE (one URL path a line) each request goes to one of those paths, drawn
-- at random: the requests are formatted once here, so a request costs a table look-up.
local file = assert(io.open(os.getenv("WRK_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
wrk.headers["Content-Type"] = "application/json"
file:close()

local paths_file = os.getenv("WRK_PATHS_FILE")
if paths_file then
  local requests = {}
  for path in io.lines(paths_file) do
    requests[#requests + 1] = wrk.format(nil, path)
  end
  assert(#requests > 0, "no paths in " .. paths_file)
  math.randomseed(os.time())
  function request()
    return requests[math.random(#requests)]
  end
end

function done(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"non_2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
