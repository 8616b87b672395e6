-- wrk script of the benchmarks (bench/load.py writes its settings to the environment).
--
-- BENCH_MODE=post: every request is a new GitLab issue delivery: its own Idempotency-Key
-- (BENCH_NONCE-thread-n) and its own issue number (the body in BENCH_BODY carries 987654321
-- where the number goes). BENCH_MODE=get: plain GETs of the URL given to wrk.
-- BENCH_COLLECT=1 keeps the delivery id of every 2xx answer; BENCH_QUOTA=n stops a thread after
-- n answers. done() writes the figures as one JSON object to BENCH_OUT.

local mode = os.getenv("BENCH_MODE") or "get"
local nonce = os.getenv("BENCH_NONCE") or "bench"
local collect = os.getenv("BENCH_COLLECT") == "1"
local quota = tonumber(os.getenv("BENCH_QUOTA") or "0")
local iid_base = tonumber(os.getenv("BENCH_IID_BASE") or "0")
local body = nil
if mode == "post" then
  local file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
  body = file:read("*a")
  file:close()
end

local threads = {}
local sent = 0
-- globals: thread:set() and thread:get() reach them
thread_id = 0
ok = 0
other = 0
acked = {}

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("thread_id", #threads)
end

function request()
  sent = sent + 1
  if mode ~= "post" then
    return wrk.format("GET")
  end
  local number = iid_base + thread_id * 10000000 + sent
  local delivery = body:gsub("987654321", tostring(number))
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["X-Gitlab-Event"] = "Issue Hook",
    ["Idempotency-Key"] = nonce .. "-" .. thread_id .. "-" .. sent,
  }, delivery)
end

function response(status, headers, answer)
  if status >= 200 and status < 300 then
    ok = ok + 1
    if collect then
      local id = answer:match('"delivery": ?(%d+)')
      if id then
        acked[#acked + 1] = id
      end
    end
  else
    other = other + 1
  end
  if quota > 0 and ok + other >= quota then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local total_ok, total_other, ids = 0, 0, {}
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    total_other = total_other + thread:get("other")
    if collect then
      for _, id in ipairs(thread:get("acked")) do
        ids[#ids + 1] = id
      end
    end
  end
  local errors = summary.errors
  local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "ok": %d, "other": %d, "connect_errors": %d, '
      .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p99_us": %d, "max_us": %d, "mean_us": %.1f, "acked": [%s]}\n',
    summary.requests, summary.duration, total_ok, total_other, errors.connect, errors.read,
    errors.write, errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, table.concat(ids, ",")))
  out:close()
end
