-- Open-loop POST load for wrk 4.1 (benchmarks/serve.py): a fixed arrival schedule, latency from the schedule.
--
-- Run with one connection per thread (wrk -t N -c N), so each thread's request() / response() calls
-- belong to one connection and pair up. Request j (0-based) of the run is scheduled at
-- START + j / RATE; thread i sends the j ≡ i (mod N) of them, waiting in delay() until its next slot.
-- A connection still waiting for an answer cannot send, so a slow daemon makes later requests leave late:
-- their latency is measured from their scheduled time, not from when they left (as wrk2 does), and the
-- achieved rate falls below the offered one.
--
-- args: BODIES_FILE (one JSON body per line) RATE START_EPOCH_SECONDS TOTAL_REQUESTS DONE_DIR PATH THREADS
-- Output (done): lines "@@R status sched_ms service_ms finish_s" per answer, "@@S thread sent answered loader_late",
-- "@@E connect read write status timeout" (wrk's socket error counts). loader_late counts requests that left more
-- than 5 ms after both their slot and their connection's last answer: lateness of wrk itself (a starved
-- machine), not of the daemon.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clock_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(0, ts) -- CLOCK_REALTIME, the clock Python's time.time() reads
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  bodies = {}
  local path = args[6] or "/v1/route"
  for line in io.lines(args[1]) do
    bodies[#bodies + 1] = wrk.format("POST", path, { ["Content-Type"] = "application/json" }, line)
  end
  rate = tonumber(args[2])
  start = tonumber(args[3])
  total = tonumber(args[4])
  done_dir = args[5]
  nthreads = tonumber(args[7])
  nxt = id           -- the next request index this thread sends
  pending = nil      -- the scheduled time of the request in flight
  sent_at = nil
  sent, answered, loader_late = 0, 0, 0
  ready_at = nil     -- when the connection became free for the request in flight
  results = {}       -- "status sched_ms service_ms finish_s" per answer
  quota = 0
  if id < total then quota = math.floor((total - 1 - id) / nthreads) + 1 end
  if quota == 0 then
    local f = io.open(done_dir .. "/" .. id, "w"); if f then f:close() end
  end
end

function delay()
  if nxt >= total then return 3600000 end -- this thread's share is sent: idle until wrk stops
  pending = start + nxt / rate
  ready_at = now()
  local wait = (pending - ready_at) * 1000
  if wait < 1 then return 0 end
  return math.floor(wait) -- wrk's timers have millisecond resolution; never wake after the slot
end

function request()
  local j = nxt
  if pending == nil then -- wrk's own check call at start-up (no delay() before it): not a real request
    return bodies[1]
  end
  nxt = nxt + nthreads
  sent = sent + 1
  sent_at = now()
  if sent_at - math.max(pending, ready_at) > 0.005 then loader_late = loader_late + 1 end
  return bodies[(j % #bodies) + 1]
end

function response(status, headers, body)
  local t = now()
  if sent_at == nil then return end
  -- From the schedule, or from the send when the millisecond timer let it leave a little early.
  local origin = math.min(pending, sent_at)
  answered = answered + 1
  results[#results + 1] = string.format("%d %.3f %.3f %.4f", status, (t - origin) * 1000,
    (t - sent_at) * 1000, t - start)
  sent_at = nil
  if answered >= quota then
    local f = io.open(done_dir .. "/" .. id, "w"); if f then f:close() end
  end
end

function done(summary, latency, requests)
  local out = {}
  for _, thread in ipairs(threads) do
    local rows = thread:get("results") or {}
    for _, row in ipairs(rows) do out[#out + 1] = "@@R " .. row end
    out[#out + 1] = string.format("@@S %d %d %d %d", thread:get("id"), thread:get("sent") or 0,
      thread:get("answered") or 0, thread:get("loader_late") or 0)
  end
  local e = summary.errors
  out[#out + 1] = string.format("@@E %d %d %d %d %d", e.connect, e.read, e.write, e.status, e.timeout)
  io.write(table.concat(out, "\n") .. "\n")
end
