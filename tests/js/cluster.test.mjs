// Three `imks conformance` nodes of two shards each, joined over the local NATS
// (`scripts/ensure-nats.sh` starts one), driven by the official socket.io-client over both
// transports: a room broadcast reaches every member on every node exactly once and in each
// sender's order, and nobody else; a node killed with SIGKILL leaves the others delivering.
//
// The nodes share a subject prefix of their own, so other tests on the same NATS never see
// them. Readiness is awaited on each node's `imks_cluster_subscriptions` gauge, which counts a
// subscription once NATS has it.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { io } from "socket.io-client";
import { startImks } from "./server.mjs";

const PREFIX = `js${randomBytes(6).toString("hex")}`;
const CLUSTER_ENV = {
  IMKS_CLUSTER__BACKEND: "nats",
  IMKS_CLUSTER__PREFIX: PREFIX,
  IMKS_CLUSTER__UNSUBSCRIBE_DELAY_MS: "200",
};

let nodes = [];
before(async () => {
  nodes = await Promise.all([0, 1, 2].map(() => startImks({ shards: 2, env: CLUSTER_ENV })));
  for (const [i, n] of nodes.entries()) {
    await waitUntil(async () => (await n.health()).checks?.cluster?.status === "up", `node ${i} connected to NATS`);
  }
});
after(async () => {
  clients.forEach((c) => c.disconnect());
  const codes = await Promise.all(nodes.map((n) => n.stop()));
  // The node the last test killed has no exit code; the others exit 0 on SIGTERM.
  assert.ok(codes.every((c) => c === null || c === 0), `exit codes ${JSON.stringify(codes)}`);
});

// Polls `cond` until it holds; fails with `what` after `ms`.
async function waitUntil(cond, what, ms = 10000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) assert.fail(`timed out waiting for: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

const subscriptions = (node) => node.metric("imks_cluster_subscriptions");

// Waits until each node has `expected[i]` subscriptions of rooms and namespaces, besides the two
// every node has: the control subject and its own.
async function waitSubscriptions(expected) {
  for (const [i, n] of nodes.entries()) {
    const want = expected[i] + 2;
    await waitUntil(async () => (await subscriptions(n)) === want, `node ${i} at ${want} subscriptions`);
  }
}

const TRANSPORTS = {
  websocket: { transports: ["websocket"] },
  polling: { transports: ["polling"] },
  // Polling first, then the upgrade to WebSocket (the client's default).
  upgrade: {},
};

const clients = [];

// A client on `node` over `transport`, keeping every `msg` it receives.
async function client(name, node, transport) {
  const socket = io(node.url, { forceNew: true, reconnection: false, ...TRANSPORTS[transport] });
  clients.push(socket);
  const c = { name, socket, got: [] };
  socket.on("msg", (m) => c.got.push(m));
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
  return c;
}

async function join(c, room) {
  const ack = await new Promise((resolve) => c.socket.emit("join", room, resolve));
  assert.equal(ack, "ok", `${c.name} joined ${room}`);
}

// Every `msg` of `room` from `from` that `c` received, as the list of their `seq`.
const seqs = (c, room, from) => c.got.filter((m) => m.room === room && m.from === from && m.end === undefined).map((m) => m.seq);
const ends = (c, room) => c.got.filter((m) => m.room === room && m.end !== undefined).map((m) => m.from);
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

// Publishes `seq` first..last to `room` from `c`, then an end marker on the same room: each
// room's messages from one sender arrive in order, so a member that has a sender's marker has
// everything that sender published before it.
function publish(c, room, first, last) {
  for (const seq of range(first, last)) c.socket.emit("publish", { room, from: c.name, seq });
  c.socket.emit("publish", { room, from: c.name, end: last });
}

test("a room broadcast reaches every member on every node once, in order, and nobody else", async () => {
  const [n0, n1, n2] = nodes;
  // Members of `a` on every node, of `b` on nodes 0 and 1 only, over every transport; one
  // outsider per node. Everyone is in `ctl`, which carries the final barrier.
  const layout = [
    ["a0-ws", n0, "websocket", ["a", "b"]],
    ["a0-poll", n0, "polling", ["a"]],
    ["b0-up", n0, "upgrade", ["b"]],
    ["out0", n0, "websocket", []],
    ["a1-poll", n1, "polling", ["a", "b"]],
    ["a1-up", n1, "upgrade", ["a"]],
    ["b1-ws", n1, "websocket", ["b"]],
    ["out1", n1, "polling", []],
    ["a2-ws", n2, "websocket", ["a"]],
    ["a2-poll", n2, "polling", ["a"]],
    ["a2-up", n2, "upgrade", ["a"]],
    ["out2", n2, "polling", []],
  ];
  const all = await Promise.all(layout.map(([name, node, transport]) => client(name, node, transport)));
  try {
    await broadcasts(all, layout);
  } finally {
    for (const c of all) c.socket.disconnect();
  }
  // Every socket gone: each node lets go of every subject after the delay.
  await waitSubscriptions([0, 0, 0]);
});

// Joins the layout's rooms, publishes from senders on every node and checks what every client
// received.
async function broadcasts(all, layout) {
  const byName = Object.fromEntries(all.map((c) => [c.name, c]));
  const rooms = Object.fromEntries(layout.map(([name, , , r]) => [name, r]));
  await Promise.all(all.flatMap((c) => [...rooms[c.name], "ctl"].map((r) => join(c, r))));
  // The namespace, `ctl` and their rooms: node 2 has no member of `b`.
  await waitSubscriptions([4, 4, 3]);

  // Senders on every node, members or not of the room they publish to (out2 publishes to `b`,
  // which node 2 has no member of).
  const sends = [
    ["a0-ws", "a"],
    ["a0-ws", "b"],
    ["a1-poll", "a"],
    ["a2-up", "a"],
    ["out2", "b"],
    ["b1-ws", "b"],
  ];
  const N = 25;
  for (const [from, room] of sends) publish(byName[from], room, 1, N);
  for (const c of all) {
    const senders = (room) => sends.filter(([, r]) => r === room).map(([f]) => f);
    const markers = rooms[c.name].flatMap((room) => senders(room).map((f) => `${room}/${f}`));
    await waitUntil(
      () => markers.every((m) => ends(c, m.split("/")[0]).includes(m.split("/")[1])),
      `${c.name} has the end markers ${markers}`,
    );
  }
  // The barrier for outsiders and for anything late: one marker per sender node on `ctl`.
  for (const from of ["a0-ws", "a1-poll", "out2"]) byName[from].socket.emit("publish", { room: "ctl", from, end: 0 });
  for (const c of all) await waitUntil(() => ends(c, "ctl").length === 3, `${c.name} has the ctl barrier`);

  for (const c of all) {
    for (const [from, room] of sends) {
      const want = rooms[c.name].includes(room) ? range(1, N) : [];
      assert.deepEqual(seqs(c, room, from), want, `${c.name}: ${room} from ${from}`);
      const markers = ends(c, room).filter((f) => f === from).length;
      assert.equal(markers, rooms[c.name].includes(room) ? 1 : 0, `${c.name}: end of ${room} from ${from}`);
    }
    assert.deepEqual(ends(c, "ctl").sort(), ["a0-ws", "a1-poll", "out2"], `${c.name}: ctl barrier once each`);
    const foreign = c.got.filter((m) => ![...rooms[c.name], "ctl"].includes(m.room));
    assert.deepEqual(foreign, [], `${c.name} received messages of rooms it is not in`);
  }
}

test("a node killed with SIGKILL does not disturb the others' delivery", async () => {
  const [n0, n1, n2] = nodes;
  const members = await Promise.all([
    client("k0-ws", n0, "websocket"),
    client("k0-poll", n0, "polling"),
    client("k1-up", n1, "upgrade"),
    client("k1-poll", n1, "polling"),
    client("k2-ws", n2, "websocket"),
    client("k2-poll", n2, "polling"),
  ]);
  await Promise.all(members.map((c) => join(c, "k")));
  await waitSubscriptions([2, 2, 2]);
  const [s0, , s1, , s2] = members;
  const N = 10;
  for (const s of [s0, s1, s2]) publish(s, "k", 1, N);
  for (const c of members) {
    await waitUntil(() => ends(c, "k").length === 3, `${c.name} has the first round's markers`);
    for (const s of [s0, s1, s2]) assert.deepEqual(seqs(c, "k", s.name), range(1, N), `${c.name}: from ${s.name}`);
  }

  const gone = members.filter((c) => c.name.startsWith("k2"));
  const dropped = gone.map((c) => new Promise((resolve) => c.socket.once("disconnect", resolve)));
  assert.equal(await n2.kill("SIGKILL"), null, "node 2 ended by the signal");
  await Promise.all(dropped);

  const survivors = members.filter((c) => !gone.includes(c));
  for (const s of [s0, s1]) publish(s, "k", N + 1, 2 * N);
  for (const c of survivors) {
    await waitUntil(() => ends(c, "k").length === 5, `${c.name} has the second round's markers`);
    assert.deepEqual(seqs(c, "k", s0.name), range(1, 2 * N), `${c.name}: from ${s0.name}`);
    assert.deepEqual(seqs(c, "k", s1.name), range(1, 2 * N), `${c.name}: from ${s1.name}`);
    assert.deepEqual(seqs(c, "k", s2.name), range(1, N), `${c.name}: from ${s2.name}`);
  }
  for (const [i, n] of [n0, n1].entries()) {
    const h = await n.health();
    assert.equal(h.status, "ok", `node ${i} healthy: ${JSON.stringify(h)}`);
    assert.equal(await n.metric("imks_cluster_dropped_total"), 0, `node ${i} dropped nothing`);
  }
});
