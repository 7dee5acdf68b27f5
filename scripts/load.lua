-- wrk script: single-event POST /track with a unique event name per request.
-- Usage: wrk -t2 -c64 -d10s -s scripts/load.lua http://127.0.0.1:5000
local n = 0
request = function()
  n = n + 1
  local body = '{"userId":"u' .. n .. '","events":[{"eventName":"page_view","metadata":{"path":"/pricing","ref":"newsletter"},"timestampUTC":1732435200}]}'
  return wrk.format("POST", "/track", {["Content-Type"] = "application/json"}, body)
end
