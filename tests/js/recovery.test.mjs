// Connection state recovery with the official client: after a dropped connection the client
// gets `socket.recovered`, its id, its rooms and what it missed.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { startImks } from "./server.mjs";

let server;
before(async () => {
  server = await startImks({ extraArgs: ["--recovery-window-ms", "10000"] });
});
after(async () => {
  assert.equal(await server.stop(), 0);
});

const once = (emitter, event) => new Promise((resolve) => emitter.once(event, (...args) => resolve(args)));

test("a dropped client recovers its id, rooms and missed events", async () => {
  const socket = io(server.url, { forceNew: true, reconnectionDelay: 50, reconnectionDelayMax: 100 });
  const publisher = io(server.url, { forceNew: true, reconnection: false });
  try {
    await Promise.all([once(socket, "connect"), once(publisher, "connect")]);
    assert.equal(socket.recovered, false);
    const id = socket.id;
    await new Promise((resolve) => socket.emit("join", "r", resolve));
    const seen = [];
    socket.on("msg", (m) => seen.push(m.n));
    const first = once(socket, "msg");
    publisher.emit("publish", { room: "r", n: 1 });
    await first;

    // Drop the transport under the client (the server just sees the connection end, as on
    // a network failure); the client reconnects by itself.
    const dropped = once(socket, "disconnect");
    socket.io.engine.close();
    await dropped;
    await new Promise((resolve) => publisher.emit("echo-ack", resolve)); // ordering fence
    publisher.emit("publish", { room: "r", n: 2 });
    await new Promise((resolve) => publisher.emit("echo-ack", resolve));

    const missed = new Promise((resolve) => socket.on("msg", (m) => m.n === 2 && resolve()));
    await once(socket, "connect");
    assert.equal(socket.recovered, true, "socket.recovered");
    assert.equal(socket.id, id, "same id");
    await missed;
    // Still in the room after recovery.
    const third = new Promise((resolve) => socket.on("msg", (m) => m.n === 3 && resolve()));
    publisher.emit("publish", { room: "r", n: 3 });
    await third;
    assert.deepEqual(seen, [1, 2, 3], "each event once, in order");
  } finally {
    socket.disconnect();
    publisher.disconnect();
  }
});
