-- wrk script: POSTs unique single-message webhooks in the sample-file
-- wrapper form (webhook_files/conversation_1_message_1.json), spread over
-- CUSTOMERS conversations, each customer with a profile name. Every body is
-- unique (the gateway's broker id is a hash of the body) and so is every
-- message id, so each accepted webhook is one message to store.
--   RUN=r1 CUSTOMERS=200 wrk -t1 -c16 -d10s -s bench/wrk/stored.lua http://127.0.0.1:3001/webhook
local customers = tonumber(os.getenv("CUSTOMERS") or "200")
local run = os.getenv("RUN") or "0" -- distinct per invocation
local first_customer = 919800000000 -- customer c is first_customer + c (same as the bench's preload)
local threads, counter, thread_id = 0, 0, 0

local first_names = {"Ravi", "Neha", "Aarav", "Priya", "Vikram", "Ananya", "Rohan", "Isha", "Karan", "Meera",
  "Arjun", "Diya", "Sanjay", "Pooja", "Rahul", "Kavya", "Amit", "Sneha", "Nikhil", "Riya"}
local last_names = {"Kumar", "Joshi", "Sharma", "Patel", "Singh", "Reddy", "Nair", "Gupta", "Mehta", "Iyer"}

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  thread_id = tonumber(wrk.thread:get("id"))
end

local template = '{"payload_type":"whatsapp_webhook","_id":"bench-%s-%d-%d","metaData":{"entry":[{"changes":[{'
  .. '"field":"messages","value":{"contacts":[{"profile":{"name":"%s"},"wa_id":"%d"}],'
  .. '"messages":[{"from":"%d","id":"wamid.stored.%s.%d.%d","timestamp":"%d",'
  .. '"text":{"body":"Hi, I would like to know more about order %d."},"type":"text"}],'
  .. '"messaging_product":"whatsapp","metadata":{"display_phone_number":"918329446654",'
  .. '"phone_number_id":"629305560276479"}}}],"id":"30164062719905277"}],'
  .. '"gs_app_id":"bench-app","object":"whatsapp_business_account"},'
  .. '"createdAt":"2025-08-06 12:00:00","startedAt":"2025-08-06 12:00:00",'
  .. '"completedAt":"2025-08-06 12:00:01","executed":true}'

function request()
  counter = counter + 1
  -- Round-robin over the customers, each thread from its own starting point.
  local c = (counter + thread_id * 37) % customers
  local customer = first_customer + c
  local name = first_names[c % #first_names + 1] .. " " .. last_names[math.floor(c / #first_names) % #last_names + 1]
  local body = string.format(template, run, thread_id, counter, name, customer, customer, run, thread_id, counter,
    os.time(), counter)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
