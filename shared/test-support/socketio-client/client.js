// A real socket.io-client v4, driven by the Rust tests over stdin/stdout.
//
//   node client.js <url> <transports, e.g. "polling,websocket" or "websocket">
//
// Prints one JSON line per happening: {"type":"connect","transport":...},
// {"type":"upgrade","transport":...}, {"type":"event","event":...,"data":...},
// {"type":"ack","id":...,"data":...}, {"type":"disconnect","reason":...}.
// Reads one JSON command per line: {"id":1,"emit":"subscribe","args":[...]}.
// Exits when stdin closes.
const { io } = require("socket.io-client");
const readline = require("readline");

const [url, transports = "polling,websocket"] = process.argv.slice(2);
const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");

const socket = io(url, { transports: transports.split(","), reconnectionDelay: 100 });
socket.io.on("open", () => {
  const engine = socket.io.engine;
  engine.on("upgrade", () => print({ type: "upgrade", transport: engine.transport.name }));
});
socket.on("connect", () => print({ type: "connect", transport: socket.io.engine.transport.name }));
socket.on("disconnect", (reason) => print({ type: "disconnect", reason }));
socket.on("connect_error", (err) => print({ type: "connect_error", message: err.message }));
for (const event of ["newMessage", "statusUpdate"]) {
  socket.on(event, (data) => print({ type: "event", event, data }));
}

const input = readline.createInterface({ input: process.stdin });
input.on("line", async (line) => {
  const command = JSON.parse(line);
  const data = await socket.timeout(10000).emitWithAck(command.emit, ...command.args);
  print({ type: "ack", id: command.id, data });
});
input.on("close", () => {
  socket.close();
  process.exit(0);
});
