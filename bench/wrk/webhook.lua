-- wrk script: POSTs unique WhatsApp webhooks (the gateway's broker id is a
-- hash of the body, so repeated bodies would be deduplicated, not stored).
--   MESSAGES=25 wrk -s bench/wrk/webhook.lua http://127.0.0.1:3001/webhook
local messages = tonumber(os.getenv("MESSAGES") or "1")
local run = os.getenv("RUN") or "0" -- distinct per invocation
local threads, counter, thread_id = 0, 0, 0

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  thread_id = tonumber(wrk.thread:get("id"))
end

local message = '{"from":"4477%08d","id":"wamid.wrk.%s.%d.%d.%d","timestamp":"1754500000",'
  .. '"type":"text","text":{"body":"benchmark message"}}'

function request()
  counter = counter + 1
  local items = {}
  for i = 1, messages do
    items[i] = string.format(message, (counter + i) % 1000, run, thread_id, counter, i)
  end
  local body = '{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages",'
    .. '"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550000000",'
    .. '"phone_number_id":"1"},"contacts":[{"wa_id":"447700000000","profile":{"name":"Bench"}}],'
    .. '"messages":[' .. table.concat(items, ",") .. ']}}]}]}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
