-- wrk script: POST /reservations with a unique reservation id per request, spread over
-- the sections named in SECTIONS (comma-separated), 1..2 seats each. Counts the answers by
-- status (201 reserved, 409 sold out) and prints them at the end.
local counter = 0
local threads = {}
local sections = {}
for s in string.gmatch(os.getenv("SECTIONS") or "A", "[^,]+") do
  table.insert(sections, s)
end
local prefix = os.getenv("RUN") or tostring(os.time())

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  created, soldout, other = 0, 0, 0
end

function request()
  counter = counter + 1
  local section = sections[(counter % #sections) + 1]
  local body = string.format(
    '{"reservation_id":"%s-%d-%d","section_id":"%s","customer_id":"c%d","seats":%d}',
    prefix, id, counter, section, counter % 997, (counter % 2) + 1)
  return wrk.format("POST", "/reservations", {["content-type"] = "application/json"}, body)
end

function response(status, headers, body)
  if status == 201 then created = created + 1
  elseif status == 409 then soldout = soldout + 1
  else other = other + 1 end
end

function done(summary, latency, requests)
  local c, s, o = 0, 0, 0
  for _, t in ipairs(threads) do
    c = c + t:get("created"); s = s + t:get("soldout"); o = o + t:get("other")
  end
  io.write(string.format("status 201=%d 409=%d other=%d\n", c, s, o))
  for _, p in ipairs({50, 90, 99}) do
    io.write(string.format("p%d_ms %.3f\n", p, latency:percentile(p) / 1000))
  end
end
