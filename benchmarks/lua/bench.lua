-- wrk script for the async_accept benchmarks, configured by environment:
--   BENCH_METHOD (GET), BENCH_BODY (sent as JSON), BENCH_AUTH (Authorization),
--   BENCH_PATHS (a file of paths, one a line, requested round-robin).
-- done() prints one line "BENCHJSON {...}" that the harness parses.
local method = os.getenv("BENCH_METHOD") or "GET"
local body = os.getenv("BENCH_BODY")
local auth = os.getenv("BENCH_AUTH")
local paths_file = os.getenv("BENCH_PATHS")

wrk.method = method
if body then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end
if auth then
  wrk.headers["Authorization"] = auth
end

if paths_file then
  local paths = {}
  local idx = 0
  function init(args)
    for line in io.lines(paths_file) do
      paths[#paths + 1] = line
    end
    idx = math.random(#paths)
  end
  function request()
    idx = idx % #paths + 1
    return wrk.format(nil, paths[idx])
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
