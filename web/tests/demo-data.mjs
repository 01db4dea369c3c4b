// A lively demo conversation for screenshots: texts both ways with
// statuses, a reply, a reaction, a location, posted as webhooks "now".
//   node web/tests/demo-data.mjs http://127.0.0.1:3000
const [base = "http://127.0.0.1:3000"] = process.argv.slice(2);
const business = "15550001111";
const metadata = { display_phone_number: business, phone_number_id: "106540352242922" };
const customer = { wa_id: "34600111222", name: "Maria Garcia" };
const t0 = Math.floor(Date.now() / 1000) - 3600;
let n = 0;

async function post(value) {
  const body = { object: "whatsapp_business_account", entry: [{ id: "1", changes: [{ field: "messages", value: { messaging_product: "whatsapp", metadata, ...value } }] }] };
  const r = await fetch(`${base}/webhook`, { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
  if (!r.ok) throw new Error(`${r.status} ${await r.text()}`);
}

/** @param {boolean} out @param {object} message */
async function message(out, message, minutes) {
  const id = `wamid.demo.${Date.now()}.${n++}`;
  const from = out ? business : customer.wa_id;
  await post({
    contacts: [{ profile: { name: customer.name }, wa_id: customer.wa_id }],
    messages: [{ from, ...(out ? { to: customer.wa_id } : {}), id, timestamp: String(t0 + minutes * 60), ...message }],
  });
  return id;
}
const text = (body) => ({ type: "text", text: { body } });
async function status(id, value, minutes) {
  await post({ statuses: [{ id, status: value, timestamp: String(t0 + minutes * 60), recipient_id: customer.wa_id }] });
}

const hello = await message(false, text("Hi! I ordered the oak nameplate on Monday, order #4821 🙂"), 0);
const reply = await message(true, { ...text("Hello Maria, thanks for your order! It was engraved this morning."), context: { from: customer.wa_id, id: hello } }, 2);
await status(reply, "delivered", 3);
await status(reply, "read", 4);
const when = await message(false, text("Great! When will it arrive?"), 5);
const ship = await message(true, text("It ships today with express delivery: tomorrow before 14:00."), 7);
await status(ship, "delivered", 8);
await status(ship, "read", 9);
await message(false, { type: "reaction", reaction: { message_id: ship, emoji: "❤️" } }, 10);
await message(false, { type: "location", location: { latitude: 40.4168, longitude: -3.7038, name: "Office", address: "Calle Mayor 1, Madrid" } }, 11);
await message(false, text("Could you deliver it to my office instead?"), 12);
const sure = await message(true, text("Of course, I've changed the address. Anything else?"), 13);
await status(sure, "delivered", 14);
void when;
console.log(`demo conversation conv_${customer.wa_id}`);
