-- wrk script of benches/throughput.rs: sends one case's request bodies in turn, as the
-- bench's in-process load generator does. The bench writes the bodies and runs
--   wrk -tT -cC -dDs --latency -s scripts/throughput.lua URL -- BODIES_FILE RUN_TAG
-- BODIES_FILE has one request a line, "PATH<TAB>0|1<TAB>BODY"; with 1, every "@ID@" in BODY
-- is replaced by an id unique to the request (RUN_TAG, the thread and a counter), so each
-- /v1 message has its own messageId and the dedup window is grown, never hit.

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end

local headers = { ["Content-Type"] = "application/json" }
-- A pre-formatted request (string), or {path = ..., parts = body split at "@ID@"}.
local requests = {}
local sent = 0
local id_prefix = ""

local function split(s, sep)
  local parts, from = {}, 1
  while true do
    local at = string.find(s, sep, from, true)
    if not at then
      parts[#parts + 1] = string.sub(s, from)
      return parts
    end
    parts[#parts + 1] = string.sub(s, from, at - 1)
    from = at + #sep
  end
end

function init(args)
  local file = assert(io.open(args[1], "rb"), "bodies file")
  id_prefix = (args[2] or "") .. "t" .. tostring(thread_no or 0) .. "x"
  for line in file:lines() do
    local path, unique, body = string.match(line, "^([^\t]+)\t([01])\t(.*)$")
    assert(path, "malformed bodies line")
    if unique == "1" then
      requests[#requests + 1] = { path = path, parts = split(body, "@ID@") }
    else
      requests[#requests + 1] = wrk.format("POST", path, headers, body)
    end
  end
  file:close()
  assert(#requests > 0, "no bodies")
end

function request()
  sent = sent + 1
  local r = requests[(sent % #requests) + 1]
  if type(r) == "string" then
    return r
  end
  return wrk.format("POST", r.path, headers, table.concat(r.parts, id_prefix .. sent))
end
