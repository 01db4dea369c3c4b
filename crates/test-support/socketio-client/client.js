// A real socket.io-client v4, driven by the Rust tests over stdin/stdout.
//
//   node client.js <url> <transports, e.g. "polling,websocket" or "websocket"> [options JSON]
//
// Options: {"auth": {...}} is sent with every (re)connection;
// {"extraHeaders": {...}} with every request; with
// {"resume": true} the client keeps `auth.lastSeq` at the `seq` of the last
// event it got, as the README tells clients to, so that reconnecting
// resumes where it left off.
//
// Prints one JSON line per happening: {"type":"connect","transport":...},
// {"type":"upgrade","transport":...}, {"type":"event","event":...,"data":...},
// {"type":"ack","id":...,"data":...}, {"type":"disconnect","reason":...},
// {"type":"connect_error","message":...}.
// Reads one JSON command per line: {"id":1,"emit":"subscribe","args":[...]},
// {"id":2,"disconnect":true}, {"id":3,"connect":true} (each acknowledged).
// Exits when stdin closes.
const { io } = require("socket.io-client");
const readline = require("readline");

const [url, transports = "polling,websocket", optionsJson = "{}"] = process.argv.slice(2);
const options = JSON.parse(optionsJson);
const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");

const socket = io(url, {
  transports: transports.split(","),
  reconnectionDelay: 100,
  auth: { ...(options.auth || {}) },
  // E.g. {"Origin": "http://app.example"}, as a browser would send.
  extraHeaders: options.extraHeaders || {},
});
socket.io.on("open", () => {
  const engine = socket.io.engine;
  engine.on("upgrade", () => print({ type: "upgrade", transport: engine.transport.name }));
});
socket.on("connect", () => print({ type: "connect", transport: socket.io.engine.transport.name }));
socket.on("disconnect", (reason) => print({ type: "disconnect", reason }));
socket.on("connect_error", (err) => print({ type: "connect_error", message: err.message }));
for (const event of ["newMessage", "statusUpdate", "resync"]) {
  socket.on(event, (data) => {
    if (options.resume && data && typeof data.seq === "number") {
      socket.auth.lastSeq = data.seq;
    }
    print({ type: "event", event, data });
  });
}

const input = readline.createInterface({ input: process.stdin });
input.on("line", async (line) => {
  const command = JSON.parse(line);
  if (command.disconnect) {
    socket.disconnect();
    print({ type: "ack", id: command.id, data: null });
  } else if (command.connect) {
    socket.connect();
    print({ type: "ack", id: command.id, data: null });
  } else {
    const data = await socket.timeout(10000).emitWithAck(command.emit, ...command.args);
    print({ type: "ack", id: command.id, data });
  }
});
input.on("close", () => {
  socket.close();
  process.exit(0);
});
