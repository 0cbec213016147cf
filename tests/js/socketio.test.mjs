// The official socket.io-client 4.8 against imks's conformance application.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { startImks } from "./server.mjs";

let server;
before(async () => {
  server = await startImks();
});
after(async () => {
  const code = await server.stop();
  assert.equal(code, 0, "imks exits 0 on SIGTERM");
});

const clients = [];
function connect(opts = {}) {
  const socket = io(server.url, { forceNew: true, reconnection: false, ...opts });
  clients.push(socket);
  return socket;
}
const once = (emitter, event) => new Promise((resolve) => emitter.once(event, (...args) => resolve(args)));
after(() => clients.forEach((c) => c.disconnect()));

test("polling, then upgrade to websocket", async () => {
  const socket = connect();
  const [auth] = await once(socket, "auth");
  assert.deepEqual(auth, {});
  assert.ok(socket.connected);
  if (socket.io.engine.transport.name !== "websocket") {
    await once(socket.io.engine, "upgrade");
  }
  assert.equal(socket.io.engine.transport.name, "websocket");
  socket.emit("message", "after upgrade");
  assert.deepEqual(await once(socket, "message-back"), ["after upgrade"]);
});

test("websocket only, with auth", async () => {
  const socket = connect({ transports: ["websocket"], auth: { token: "123" } });
  const [auth] = await once(socket, "auth");
  assert.deepEqual(auth, { token: "123" });
  assert.equal(socket.io.engine.transport.name, "websocket");
});

test("polling only", async () => {
  const socket = connect({ transports: ["polling"] });
  await once(socket, "connect");
  socket.emit("message", 1, "2", { 3: [true] });
  assert.deepEqual(await once(socket, "message-back"), [1, "2", { 3: [true] }]);
});

test("client acks and server acks", async () => {
  const socket = connect();
  await once(socket, "connect");
  const args = await new Promise((resolve) => socket.emit("message-with-ack", 1, "2", { 3: [false] }, (...a) => resolve(a)));
  assert.deepEqual(args, [1, "2", { 3: [false] }]);
  // The server emits with an ack request, then re-emits what we acked.
  const echoed = new Promise((resolve) => {
    socket.on("emit-with-ack", (...a) => {
      const last = a[a.length - 1];
      if (typeof last === "function") last("acked", 42);
      else resolve(a);
    });
  });
  socket.emit("emit-with-ack", "please ack");
  assert.deepEqual(await echoed, ["acked", 42]);
});

test("binary events and binary acks", async () => {
  const socket = connect();
  await once(socket, "connect");
  const a = Buffer.from([1, 2, 3]);
  const b = Buffer.from("héllo");
  socket.emit("message", a, { nested: b });
  const [x, y] = await once(socket, "message-back");
  assert.deepEqual(Buffer.from(x), a);
  assert.deepEqual(Buffer.from(y.nested), b);
  const acked = await new Promise((resolve) => socket.emit("message-with-ack", a, (...r) => resolve(r)));
  assert.deepEqual(Buffer.from(acked[0]), a);
});

test("custom namespace and unknown namespace", async () => {
  const custom = connect({ path: "/socket.io/" });
  const ns = io(`${server.url}/custom`, { forceNew: true, reconnection: false, auth: { token: "abc" } });
  clients.push(ns);
  const [auth] = await once(ns, "auth");
  assert.deepEqual(auth, { token: "abc" });
  const bad = io(`${server.url}/random`, { forceNew: true, reconnection: false });
  clients.push(bad);
  const [err] = await once(bad, "connect_error");
  assert.equal(err.message, "Invalid namespace");
  custom.disconnect();
});

test("room broadcast reaches every member on every shard exactly once", async () => {
  const n = 24;
  const members = Array.from({ length: n }, () => connect());
  await Promise.all(members.map((s) => once(s, "connect")));
  await Promise.all(members.map((s) => new Promise((resolve) => s.emit("join", "r1", resolve))));
  const outsider = connect();
  await once(outsider, "connect");
  let outsiderGot = 0;
  outsider.on("msg", () => outsiderGot++);

  const health = await server.health();
  const perShard = health.shards.map((s) => s.connections);
  assert.ok(perShard.every((c) => c > 0), `clients on every shard: ${JSON.stringify(perShard)}`);

  const counts = members.map(() => new Map());
  const done = members.map(
    (s, i) =>
      new Promise((resolve) =>
        s.on("msg", (m) => {
          counts[i].set(m.seq, (counts[i].get(m.seq) ?? 0) + 1);
          if (m.seq === 2) resolve();
        }),
      ),
  );
  members[0].emit("publish", { room: "r1", seq: 1 });
  members[n - 1].emit("publish", { room: "r1", seq: 2 });
  await Promise.all(done);
  // Every member saw both publications, once each.
  counts.forEach((c, i) => {
    assert.equal(c.get(2), 1, `member ${i}: seq 2`);
  });
  await Promise.all(members.map((s, i) => (counts[i].get(1) === 1 ? null : once(s, "msg"))));
  counts.forEach((c, i) => assert.equal(c.get(1), 1, `member ${i}: seq 1 exactly once`));
  assert.equal(outsiderGot, 0, "a socket outside the room gets nothing");
});
