-- wrk script for the ingest gateway: POSTs batches of BATCH usage events, each event id unique
-- per thread and request, and counts answers that are not 202.
--   wrk -t2 -c32 -d30s -s scripts/ingest/load.lua http://127.0.0.1:8088/v1/events
-- The key is read from INGEST_KEY; BATCH (default 100) sets the events per request.
local batch = tonumber(os.getenv("BATCH") or "100")
local key = os.getenv("INGEST_KEY") or ""
local threads = {}
local counter = 0
-- Per thread (globals, so that done() can read them with thread:get).
not_accepted = 0


function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

function init(args)
  requests, not_accepted = 0, 0
  wrk.method = "POST"
  wrk.headers["Authorization"] = "Bearer " .. key
  wrk.headers["Content-Type"] = "application/cloudevents-batch+json"
end

function request()
  requests = requests + 1
  local events = {}
  for i = 1, batch do
    events[i] = string.format(
      '{"specversion":"1.0","id":"load-%d-%d-%d","source":"wrk","type":"backbone.usage.recorded",' ..
      '"time":"2026-12-05T10:00:00Z","data":{"customer_id":"c-%d","meter_id":"api_calls",' ..
      '"quantity":"1","unit":"call"}}', id, requests, i, i % 50)
  end
  return wrk.format(nil, nil, nil, "[" .. table.concat(events, ",") .. "]")
end

function response(status, headers, body)
  if status ~= 202 then not_accepted = not_accepted + 1 end
end

function done(summary, latency, requests)
  local refused = 0
  for _, thread in ipairs(threads) do refused = refused + thread:get("not_accepted") end
  local seconds = summary.duration / 1e6
  io.write(string.format("ingest-load: %d requests of %d events in %.1f s: %.0f events/s accepted" ..
    " (%d requests not 202), latency p50 %.1f ms p99 %.1f ms max %.1f ms\n",
    summary.requests, batch, seconds, (summary.requests - refused) * batch / seconds, refused,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
