// Many real socket.io-client v4 connections in one Node.js process, for the
// benchmarks (bench/src/socketio.rs drives it).
//
//   node clients.js '<json options>'
//     url            the api-gateway (or whatsapp-clone) base URL
//     clients        how many connections to open
//     conversations  0: every client gets every event; N: client i
//                    subscribes to conv_<base + i % N> only
//     base           first customer number (as a decimal string)
//
// Latency: the bench writes its send time (Unix µs) into each message's text
// as "sent:<µs>"; on `newMessage` a client records now − sent.
//
// Prints one JSON line per happening: {"type":"ready",...} once every client
// is connected (and subscribed); on stdin "reset" forgets what was recorded,
// "report" prints {"type":"report",...}; exits when stdin closes.
const { io } = require("socket.io-client");
const readline = require("readline");

const options = JSON.parse(process.argv[2]);
const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");
const nowMicros = () => (performance.timeOrigin + performance.now()) * 1000;

let deliveries = []; // latency of every delivery, µs
let perMessage = new Map(); // messageId -> [deliveries, latest latency]

function onMessage(message) {
  const match = /sent:(\d+)/.exec(message.body || "");
  if (!match) return;
  const latency = nowMicros() - Number(match[1]);
  deliveries.push(latency);
  const seen = perMessage.get(message.messageId) || [0, 0];
  perMessage.set(message.messageId, [seen[0] + 1, Math.max(seen[1], latency)]);
}

const quantile = (sorted, q) =>
  sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];

function report() {
  const sorted = Float64Array.from(deliveries).sort();
  // A message's fan-out is complete when its last client has it.
  const complete = Float64Array.from([...perMessage.values()].map((v) => v[1])).sort();
  print({
    type: "report",
    deliveries: sorted.length,
    messages: perMessage.size,
    p50_us: quantile(sorted, 0.5),
    p99_us: quantile(sorted, 0.99),
    max_us: sorted.length ? sorted[sorted.length - 1] : 0,
    complete_p50_us: quantile(complete, 0.5),
    complete_p99_us: quantile(complete, 0.99),
    connected: sockets.filter((s) => s.connected).length,
    rss_bytes: process.memoryUsage().rss,
  });
}

const sockets = [];
async function connect(i) {
  const socket = io(options.url, { transports: ["websocket"], reconnectionDelay: 500 });
  sockets.push(socket);
  socket.on("newMessage", onMessage);
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
  if (options.conversations > 0) {
    const id = `conv_${BigInt(options.base) + BigInt(i % options.conversations)}`;
    await socket.timeout(30000).emitWithAck("subscribe", [id]);
  }
}

async function main() {
  const started = Date.now();
  let next = 0;
  let failed = 0;
  // A few hundred handshakes at a time, not ten thousand at once.
  const opener = async () => {
    while (next < options.clients) {
      const i = next++;
      await connect(i).catch(() => failed++);
    }
  };
  await Promise.all(Array.from({ length: 200 }, opener));
  print({
    type: "ready",
    connected: sockets.filter((s) => s.connected).length,
    failed,
    ms: Date.now() - started,
  });
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (line === "reset") {
    deliveries = [];
    perMessage = new Map();
  } else if (line === "report") {
    report();
  }
}).on("close", () => {
  for (const socket of sockets) socket.close();
  process.exit(0);
});

main().catch((e) => {
  print({ type: "error", message: String(e) });
  process.exit(1);
});
