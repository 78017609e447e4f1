-- wrk script for bench/run: POST the OIP v2 request in $BENCH_BODY to every
-- connection's URL. With $BENCH_DELAY_MS set, each connection waits that long
-- before each request (a paced, closed-loop load: wrk has no open-loop mode).
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if pause and pause > 0 then
  function delay()
    return pause
  end
end
