// The IM event set at /socket.io/ (`imks serve` without an embedding application), driven by
// the official socket.io-client: membership, messages, edits, deletes, reactions, typing,
// presence, history, authentication (static tokens, HS256 JWTs, origins) and limits.
//
// The main server gives each of its two shards its own address (127.0.0.1 and 127.0.0.2), so
// `alice` is always on shard 0 and `bob` on shard 1 and every broadcast crosses a ring.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { request } from "node:http";
import { io } from "socket.io-client";
import { startImksServe } from "./server.mjs";

const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const ACK_TIMEOUT_MS = 5000;
// Every test ends, failing, within this even when an awaited event never comes.
const T = { timeout: 10_000 };

// ---- clients ---------------------------------------------------------------------------------

const clients = new Set();

// A client that records every event the server sends it, in order, in `socket.received`.
function connect(url, { token, ...opts } = {}) {
  const socket = io(url, {
    forceNew: true,
    reconnection: false,
    transports: ["websocket"],
    ...(token === undefined ? {} : { auth: { token } }),
    ...opts,
  });
  clients.add(socket);
  socket.received = [];
  socket.waiters = [];
  socket.onAny((event, ...args) => {
    socket.received.push({ event, payload: args[0] });
    for (const w of socket.waiters.filter((w) => w.event === event && w.pred(args[0]))) {
      socket.waiters.splice(socket.waiters.indexOf(w), 1);
      w.resolve(args[0]);
    }
  });
  return socket;
}

function closeAll() {
  for (const c of clients) c.disconnect();
  clients.clear();
}

// Resolves once connected; rejects with the refusal.
function connected(socket) {
  return new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
}

// Resolves with the refusal; rejects if the client connects.
function refused(socket) {
  return new Promise((resolve, reject) => {
    socket.once("connect_error", resolve);
    socket.once("connect", () => reject(new Error("connected, expected a refusal")));
  });
}

// The payloads of `event` received so far.
const received = (socket, event) => socket.received.filter((r) => r.event === event).map((r) => r.payload);

// The first payload of `event` matching `pred`, already received or still to come; fails
// after ACK_TIMEOUT_MS, saying what did arrive.
function waitFor(socket, event, pred = () => true) {
  const hit = received(socket, event).find(pred);
  if (hit !== undefined) return Promise.resolve(hit);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.waiters.splice(socket.waiters.indexOf(waiter), 1);
      const got = JSON.stringify(received(socket, event));
      reject(new Error(`no matching ${event} within ${ACK_TIMEOUT_MS} ms (${pred}); received: ${got}`));
    }, ACK_TIMEOUT_MS);
    const waiter = { event, pred, resolve: (v) => (clearTimeout(timer), resolve(v)) };
    socket.waiters.push(waiter);
  });
}

// Emits an IM event and resolves with its ack.
const call = (socket, event, arg) => socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, arg);

const once = (emitter, event) => new Promise((resolve) => emitter.once(event, (...args) => resolve(args)));

async function join(socket, channel) {
  assert.deepEqual(await call(socket, "channel:join", { channel_id: channel }), { ok: true });
}

// Sends `body` and waits until `other` has it: a fence for everything `socket`'s earlier
// operations on that channel could have sent `other` (one owner shard, FIFO rings).
async function fence(socket, other, channel, body) {
  const ack = await call(socket, "message:send", { channel_id: channel, body });
  assert.equal(ack.ok, true);
  return waitFor(other, "message:new", (m) => m.id === ack.message.id);
}

// Resolves once `cond()` is true, checking every 10 ms; rejects after ACK_TIMEOUT_MS.
async function until(cond, what) {
  const deadline = Date.now() + ACK_TIMEOUT_MS;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`not within ${ACK_TIMEOUT_MS} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function assertRecentMs(ms) {
  assert.ok(Number.isInteger(ms), `${ms} is an integer`);
  assert.ok(Math.abs(Date.now() - ms) < 60_000, `${ms} is a recent time in ms`);
}

function assertPresence(p, channel, user, status) {
  const { timestamp, ...rest } = p;
  assert.deepEqual(rest, { channel_id: channel, user_id: user, status });
  assertRecentMs(timestamp);
}

// A plain HTTP GET, for status codes the client does not surface.
function httpGet(url, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

// An HS256 JWT signed with node:crypto.
const b64url = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
function jwt(claims, { secret = JWT_SECRET, header = { alg: "HS256", typ: "JWT" } } = {}) {
  const signed = `${b64url(header)}.${b64url(claims)}`;
  return `${signed}.${createHmac("sha256", secret).update(signed).digest("base64url")}`;
}
const JWT_SECRET = "a test secret that is long enough for HS256";
const nowS = () => Math.floor(Date.now() / 1000);

// ---- static tokens, configured membership, one address per shard ------------------------------

const users = ["alice", "bob", "carol", "dave"];
const channels = ["general", "send", "dedup", "edit", "react", "typing", "presence", "presence-multi", "history", "upgrade"];
const MAIN_CONFIG = `
[auth]
mode = "static"
static_tokens = [
${users.map((u) => `  { token = "t-${u}", user_id = "${u}", tenant = "acme" },`).join("\n")}
]

[membership]
mode = "config"
channels = [
${channels.map((c) => `  { tenant = "acme", id = "${c}", members = ["alice", "bob", "dave"] },`).join("\n")}
  { tenant = "acme", id = "carols", members = ["carol"] },
]
`;

describe("IM events, static tokens, two shards", () => {
  let server;
  before(async () => {
    server = await startImksServe({ config: MAIN_CONFIG, shardListen: ["127.0.0.1:0", "127.0.0.2:0"] });
  });
  after(async () => {
    closeAll();
    assert.equal(await server.stop(), 0, "imks exits 0 on SIGTERM");
  });

  // alice on shard 0, bob on shard 1 (websocket unless `opts` says otherwise).
  async function pair(channel, opts = {}) {
    const alice = connect(server.shardUrl(0), { token: "t-alice", ...opts });
    const bob = connect(server.shardUrl(1), { token: "t-bob" });
    await Promise.all([connected(alice), connected(bob)]);
    await join(alice, channel);
    await join(bob, channel);
    return { alice, bob };
  }

  test("the shards listen on their own addresses", T, async () => {
    assert.notEqual(server.shardUrl(0), server.shardUrl(1));
    const bob = connect(server.shardUrl(1), { token: "t-bob" });
    await connected(bob);
    const health = await server.health();
    assert.equal(health.shards.length, 2);
    assert.ok(health.shards[1].connections >= 1, `bob is on shard 1: ${JSON.stringify(health.shards)}`);
    bob.disconnect();
  });

  test("members join; non-members may not join or send; bad names are refused", T, async () => {
    const alice = connect(server.shardUrl(0), { token: "t-alice" });
    const carol = connect(server.shardUrl(1), { token: "t-carol" });
    await Promise.all([connected(alice), connected(carol)]);
    await join(alice, "general");
    const forbidden = { ok: false, error: { code: "forbidden", message: "not a member of this channel" } };
    assert.deepEqual(await call(carol, "channel:join", { channel_id: "general" }), forbidden);
    assert.deepEqual(await call(carol, "message:send", { channel_id: "general", body: "hi" }), forbidden);
    assert.deepEqual(await call(carol, "message:history", { channel_id: "general" }), forbidden);
    assert.deepEqual(await call(alice, "channel:join", { channel_id: "gen\u0001eral" }), {
      ok: false,
      error: { code: "invalid_name", message: "channel must not contain control characters" },
    });
    const bad = await call(alice, "channel:join", { channel: "general" });
    assert.equal(bad.ok, false);
    assert.equal(bad.error.code, "bad_data");
    // carol's own channel works, and nothing of hers reached alice.
    await join(carol, "carols");
    assert.deepEqual(alice.received, []);
  });

  test("message:send reaches the other shard, acks the sender and is not echoed", T, async () => {
    const { alice, bob } = await pair("send");
    const ack = await call(alice, "message:send", { channel_id: "send", body: "hello", content_type: "text/markdown" });
    const m = ack.message;
    assert.deepEqual(ack, {
      ok: true,
      duplicate: false,
      message: {
        id: m.id,
        channel_id: "send",
        author: { user_id: "alice" },
        body: "hello",
        content_type: "text/markdown",
        created_at: m.created_at,
        edited_at: null,
        edit_history: [],
        deleted: false,
        reactions: {},
        seq: m.seq,
      },
    });
    assert.match(m.id, UUID_V7);
    assertRecentMs(m.created_at);
    assert.ok(Number.isInteger(m.seq) && m.seq >= 1, `seq ${m.seq}`);
    assert.deepEqual(await waitFor(bob, "message:new"), m, "bob gets the message as acked");

    const reply = await fence(bob, alice, "send", "hi alice");
    assert.equal(reply.content_type, "text/plain", "default content type");
    assert.equal(reply.author.user_id, "bob");
    assert.equal(reply.seq, m.seq + 1);
    assert.deepEqual(received(alice, "message:new"), [reply], "alice never got her own message");
    assert.deepEqual(received(bob, "message:new"), [m], "bob never got his own message");
  });

  test("a repeated client_msg_id is acked as a duplicate and shown once", T, async () => {
    const { alice, bob } = await pair("dedup");
    const first = await call(alice, "message:send", { channel_id: "dedup", body: "once", client_msg_id: "c-1" });
    assert.equal(first.duplicate, false);
    assert.equal(first.message.client_msg_id, "c-1");
    await waitFor(bob, "message:new", (m) => m.id === first.message.id);
    const again = await call(alice, "message:send", { channel_id: "dedup", body: "once", client_msg_id: "c-1" });
    assert.deepEqual(again, { ok: true, duplicate: true, message: first.message });
    const after = await fence(alice, bob, "dedup", "after");
    assert.deepEqual(
      received(bob, "message:new").map((m) => m.id),
      [first.message.id, after.id],
      "the retransmission was not broadcast",
    );
  });

  test("edit and delete: broadcast to the channel, only by the author", T, async () => {
    const { alice, bob } = await pair("edit");
    const { message: m } = await call(alice, "message:send", { channel_id: "edit", body: "v1" });
    await waitFor(bob, "message:new", (x) => x.id === m.id);

    const edited = await call(alice, "message:edit", { channel_id: "edit", message_id: m.id, body: "v2" });
    const u = edited.message;
    assertRecentMs(u.edited_at);
    assert.ok(u.edited_at >= m.created_at);
    assert.deepEqual(edited, {
      ok: true,
      message: { ...m, body: "v2", edited_at: u.edited_at, edit_history: [{ body: "v1", edited_at: u.edited_at }] },
    });
    assert.deepEqual(await waitFor(bob, "message:updated"), u);

    const forbidden = { ok: false, error: { code: "forbidden", message: "only the author may change this message" } };
    assert.deepEqual(await call(bob, "message:edit", { channel_id: "edit", message_id: m.id, body: "mine" }), forbidden);
    assert.deepEqual(await call(bob, "message:delete", { channel_id: "edit", message_id: m.id }), forbidden);
    assert.deepEqual(await call(bob, "message:edit", { channel_id: "edit", message_id: "nope", body: "x" }), {
      ok: false,
      error: { code: "bad_data", message: "message_id is not a message id" },
    });

    assert.deepEqual(await call(alice, "message:delete", { channel_id: "edit", message_id: m.id }), { ok: true });
    const d = await waitFor(bob, "message:deleted");
    assert.deepEqual(d, { id: m.id, channel_id: "edit", deleted_by: "alice", deleted_at: d.deleted_at });
    assertRecentMs(d.deleted_at);
    assert.deepEqual(await call(alice, "message:edit", { channel_id: "edit", message_id: m.id, body: "v3" }), {
      ok: false,
      error: { code: "deleted", message: "message was deleted" },
    });

    await fence(bob, alice, "edit", "fence");
    assert.deepEqual(received(alice, "message:updated"), [], "the editor is not sent its own edit");
    assert.deepEqual(received(alice, "message:deleted"), []);
    assert.deepEqual(received(bob, "message:updated"), [u], "refused edits are not broadcast");
    assert.deepEqual(received(bob, "message:deleted"), [d]);
  });

  test("reactions: add and remove, broadcast as {emoji: [users]}", T, async () => {
    const { alice, bob } = await pair("react");
    const { message: m } = await call(alice, "message:send", { channel_id: "react", body: "react to me" });
    await waitFor(bob, "message:new", (x) => x.id === m.id);
    const react = (s, emoji, add) =>
      call(s, add ? "reaction:add" : "reaction:remove", { channel_id: "react", message_id: m.id, emoji });
    const update = (reactions) => ({ message_id: m.id, channel_id: "react", reactions });

    assert.deepEqual(await react(bob, "👍", true), { ok: true, reactions: { "👍": ["bob"] } });
    assert.deepEqual(await waitFor(alice, "reaction:updated"), update({ "👍": ["bob"] }));
    assert.deepEqual(await react(alice, "👍", true), { ok: true, reactions: { "👍": ["alice", "bob"] } });
    assert.deepEqual(await waitFor(bob, "reaction:updated"), update({ "👍": ["alice", "bob"] }));
    assert.deepEqual(await react(alice, "🎉", true), { ok: true, reactions: { "👍": ["alice", "bob"], "🎉": ["alice"] } });
    assert.deepEqual(await react(bob, "👍", false), { ok: true, reactions: { "👍": ["alice"], "🎉": ["alice"] } });
    assert.deepEqual(await react(alice, "🎉", false), { ok: true, reactions: { "👍": ["alice"] } });

    await fence(bob, alice, "react", "fence");
    assert.deepEqual(received(alice, "reaction:updated"), [update({ "👍": ["bob"] }), update({ "👍": ["alice"], "🎉": ["alice"] })]);
    assert.deepEqual(received(bob, "reaction:updated"), [
      update({ "👍": ["alice", "bob"] }),
      update({ "👍": ["alice", "bob"], "🎉": ["alice"] }),
      update({ "👍": ["alice"] }),
    ]);
  });

  test("typing start and stop reach the others only", T, async () => {
    const { alice, bob } = await pair("typing");
    assert.deepEqual(await call(alice, "typing:start", { channel_id: "typing" }), { ok: true });
    assert.deepEqual(await waitFor(bob, "typing"), { channel_id: "typing", user_id: "alice", typing: true });
    assert.deepEqual(await call(alice, "typing:stop", { channel_id: "typing" }), { ok: true });
    assert.deepEqual(await waitFor(bob, "typing", (t) => !t.typing), { channel_id: "typing", user_id: "alice", typing: false });
    assert.deepEqual(await call(bob, "typing:start", { channel_id: "typing" }), { ok: true });
    assert.deepEqual(await waitFor(alice, "typing"), { channel_id: "typing", user_id: "bob", typing: true });
    await fence(bob, alice, "typing", "fence");
    assert.deepEqual(received(alice, "typing"), [{ channel_id: "typing", user_id: "bob", typing: true }]);
    assert.equal(received(bob, "typing").length, 2);
  });

  test("presence: online on join, offline on leave and on disconnect", T, async () => {
    const alice = connect(server.shardUrl(0), { token: "t-alice" });
    const bob = connect(server.shardUrl(1), { token: "t-bob" });
    const dave = connect(server.shardUrl(1), { token: "t-dave" });
    await Promise.all([connected(alice), connected(bob), connected(dave)]);
    await join(alice, "presence");
    await join(bob, "presence");
    assertPresence(await waitFor(alice, "presence:update", (p) => p.user_id === "bob"), "presence", "bob", "online");
    await join(dave, "presence");
    assertPresence(await waitFor(alice, "presence:update", (p) => p.user_id === "dave"), "presence", "dave", "online");
    assertPresence(await waitFor(bob, "presence:update", (p) => p.user_id === "dave"), "presence", "dave", "online");

    assert.deepEqual(await call(dave, "channel:leave", { channel_id: "presence" }), { ok: true });
    const daveLeft = (p) => p.user_id === "dave" && p.status === "offline";
    assertPresence(await waitFor(alice, "presence:update", daveLeft), "presence", "dave", "offline");

    bob.disconnect();
    const bobGone = (p) => p.user_id === "bob" && p.status === "offline";
    assertPresence(await waitFor(alice, "presence:update", bobGone), "presence", "bob", "offline");
    assert.deepEqual(
      received(alice, "presence:update").map((p) => `${p.user_id} ${p.status}`),
      ["bob online", "dave online", "dave offline", "bob offline"],
    );
    assert.ok(!received(dave, "presence:update").some((p) => p.user_id === "dave"), "no presence about oneself");
  });

  test("presence is per user: a second socket is not news, the last one to go is", T, async () => {
    const alice = connect(server.shardUrl(0), { token: "t-alice" });
    const bob1 = connect(server.shardUrl(1), { token: "t-bob" });
    const bob2 = connect(server.shardUrl(1), { token: "t-bob" });
    await Promise.all([connected(alice), connected(bob1), connected(bob2)]);
    const seen = () => received(alice, "presence:update").map((p) => `${p.user_id} ${p.status}`);
    await join(alice, "presence-multi");
    await join(bob1, "presence-multi");
    await join(bob2, "presence-multi");
    // bob's sockets share a shard: the fence follows both joins to the channel's owner.
    await fence(bob2, alice, "presence-multi", "after both joins");
    assert.deepEqual(seen(), ["bob online"], "bob's second socket is not news");

    const shard1 = async () => (await server.health()).shards[1].connections;
    const before = await shard1();
    bob1.disconnect();
    await until(async () => (await shard1()) < before, "bob's first socket is gone");
    await fence(bob2, alice, "presence-multi", "after one socket left");
    assert.deepEqual(seen(), ["bob online"], "bob still has a socket in the channel");

    assert.deepEqual(await call(bob2, "channel:leave", { channel_id: "presence-multi" }), { ok: true });
    const offline = await waitFor(alice, "presence:update", (p) => p.status === "offline");
    assertPresence(offline, "presence-multi", "bob", "offline");
    assert.deepEqual(seen(), ["bob online", "bob offline"]);
  });

  test("leaving a channel one is not in tells that channel nothing", T, async () => {
    const alice = connect(server.shardUrl(0), { token: "t-alice" });
    const bob = connect(server.shardUrl(1), { token: "t-bob" });
    const carol = connect(server.shardUrl(1), { token: "t-carol" });
    await Promise.all([connected(alice), connected(bob), connected(carol)]);
    await join(alice, "general");
    await join(bob, "general");
    assert.deepEqual(await call(carol, "channel:leave", { channel_id: "general" }), { ok: true });
    // bob's typing crosses the same ring (shard 1 to 0) after carol's leave was done.
    await call(bob, "typing:start", { channel_id: "general" });
    await waitFor(alice, "typing", (t) => t.user_id === "bob");
    assert.deepEqual(
      received(alice, "presence:update").map((p) => `${p.user_id} ${p.status}`),
      ["bob online"],
      "a non-member cannot post presence into the channel",
    );
  });

  test("history pages newest first, without gaps or repeats", T, async () => {
    const { alice, bob } = await pair("history");
    const sent = [];
    for (let i = 1; i <= 5; i++) {
      sent.push((await call(alice, "message:send", { channel_id: "history", body: `h${i}` })).message);
    }
    const pages = [];
    let before;
    do {
      const page = await call(bob, "message:history", { channel_id: "history", limit: 2, ...(before ? { before } : {}) });
      assert.equal(page.ok, true);
      pages.push(page.messages);
      before = page.next_cursor;
      assert.ok(before === null || typeof before === "string", `next_cursor ${before}`);
    } while (before !== null && pages.length < 10);
    assert.deepEqual(
      pages.map((p) => p.map((m) => m.body)),
      [["h5", "h4"], ["h3", "h2"], ["h1"]],
    );
    assert.deepEqual(pages.flat(), [...sent].reverse(), "the stored messages, exactly");
    assert.deepEqual(await call(bob, "message:history", { channel_id: "history", before: "not a cursor" }), {
      ok: false,
      error: { code: "bad_data", message: "invalid history cursor" },
    });
  });

  test("polling, upgraded to websocket, on both ends of a conversation", T, async () => {
    const { alice, bob } = await pair("upgrade", { transports: ["polling", "websocket"] });
    if (alice.io.engine.transport.name !== "websocket") await once(alice.io.engine, "upgrade");
    assert.equal(alice.io.engine.transport.name, "websocket");
    const fromBob = await fence(bob, alice, "upgrade", "to a polling client");
    assert.equal(fromBob.body, "to a polling client");
    const fromAlice = await fence(alice, bob, "upgrade", "from an upgraded client");
    assert.equal(fromAlice.author.user_id, "alice");
  });

  test("static tokens: missing, unknown, and a bad token in the handshake", T, async () => {
    const missing = await refused(connect(server.url));
    assert.equal(missing.message, "token_missing");
    assert.deepEqual(missing.data, { code: "token_missing", message: "a token is required" });
    const unknown = await refused(connect(server.url, { token: "t-mallory" }));
    assert.equal(unknown.message, "token_unknown");
    assert.deepEqual(unknown.data, { code: "token_unknown", message: "unknown token" });
    // A token in the handshake query is checked before the session exists: HTTP 401.
    const early = await refused(connect(server.url, { transports: ["polling"], query: { token: "t-mallory" } }));
    assert.equal(early.message, "xhr poll error");
    assert.equal(early.description, 401);
    // A good one there is enough: CONNECT without auth gets that identity.
    const viaQuery = connect(server.url, { transports: ["polling"], query: { token: "t-carol" } });
    await connected(viaQuery);
    assert.deepEqual(await call(viaQuery, "channel:join", { channel_id: "general" }), {
      ok: false,
      error: { code: "forbidden", message: "not a member of this channel" },
    });
    await join(viaQuery, "carols");
  });
});

// ---- JWT (HS256) and origins ----------------------------------------------------------------

describe("JWT auth and origins", () => {
  let server;
  before(async () => {
    server = await startImksServe({ config: `[auth]\nmode = "jwt"\n\n[auth.jwt]\nsecret = "${JWT_SECRET}"\n` });
  });
  after(async () => {
    closeAll();
    assert.equal(await server.stop(), 0);
  });

  const claims = (extra = {}) => ({ sub: "jwt-user", tenant: "acme", exp: nowS() + 600, ...extra });
  async function refusal(token) {
    const err = await refused(connect(server.url, { token }));
    assert.equal(err.data.code, err.message);
    return err.message;
  }

  test("a valid token connects as its subject", T, async () => {
    const socket = connect(server.url, { token: jwt(claims()) });
    await connected(socket);
    const ack = await call(socket, "message:send", { channel_id: "j", body: "signed" });
    assert.equal(ack.ok, true);
    assert.deepEqual(ack.message.author, { user_id: "jwt-user" });
  });

  test("expired, tampered and unsigned tokens are refused", T, async () => {
    assert.equal(await refusal(jwt(claims({ exp: nowS() - 3600 }))), "token_expired");
    const [h, , s] = jwt(claims()).split(".");
    assert.equal(await refusal(`${h}.${b64url(claims({ sub: "admin" }))}.${s}`), "token_bad_signature");
    assert.equal(await refusal(jwt(claims(), { secret: "another secret" })), "token_bad_signature");
    assert.equal(await refusal(`${b64url({ alg: "none", typ: "JWT" })}.${b64url(claims())}.`), "token_wrong_algorithm");
    assert.equal(await refusal("not.a-jwt"), "token_malformed");
    assert.equal(await refusal(undefined), "token_missing");
  });

  test("a foreign Origin is refused at the handshake (403), the same origin is not", T, async () => {
    const evil = { Origin: "https://evil.example" };
    const err = await refused(connect(server.url, { token: jwt(claims()), extraHeaders: evil }));
    assert.equal(err.message, "websocket error");
    assert.match(String(err.description?.message), /403/);
    const res = await httpGet(`${server.url}/socket.io/?EIO=4&transport=polling`, evil);
    assert.equal(res.status, 403);
    assert.deepEqual(JSON.parse(res.body), { error: "origin_not_allowed", message: "this Origin may not connect" });

    const same = connect(server.url, { token: jwt(claims()), extraHeaders: { Origin: server.url } });
    await connected(same);
  });
});

// ---- limits ---------------------------------------------------------------------------------

describe("limits", () => {
  let server;
  before(async () => {
    server = await startImksServe({
      config: `[limits]\nmessage_rate = 20\nmessage_burst = 20\nmax_rooms_per_session = 2\n`,
    });
  });
  after(async () => {
    closeAll();
    assert.equal(await server.stop(), 0);
  });

  test("a flooding client is told rate_limited and closed; another keeps working", T, async () => {
    const flooder = connect(server.url);
    const calm = connect(server.url);
    await Promise.all([connected(flooder), connected(calm)]);
    const events = [];
    flooder.on("error", (e) => events.push(["error", e]));
    const closed = new Promise((resolve) =>
      flooder.on("disconnect", (reason, details) => {
        events.push(["disconnect", reason]);
        resolve(details);
      }),
    );
    for (let i = 0; i < 200; i++) flooder.emit("typing:start", { channel_id: "flood" });
    const details = await closed;
    assert.deepEqual(events, [
      ["error", { code: "rate_limited", message: "more than 20 messages per second" }],
      ["disconnect", "transport close"],
    ]);
    assert.equal(details.context.code, 1008, "WebSocket close code");
    const ack = await call(calm, "message:send", { channel_id: "flood", body: "still here" });
    assert.equal(ack.ok, true);
    assert.equal(ack.message.body, "still here");
  });

  test("max_rooms_per_session bounds the channels a socket may join", T, async () => {
    const socket = connect(server.url);
    await connected(socket);
    await join(socket, "a");
    await join(socket, "b");
    await join(socket, "a"); // already in it: not a third room
    assert.deepEqual(await call(socket, "channel:join", { channel_id: "c" }), {
      ok: false,
      error: { code: "too_many", message: "a socket may be in at most 2 rooms" },
    });
    assert.deepEqual(await call(socket, "channel:leave", { channel_id: "b" }), { ok: true });
    await join(socket, "c");
  });
});

describe("flow control", () => {
  let server;
  before(async () => {
    // A tiny send queue, so the acks of one burst overflow it many times over.
    server = await startImksServe({ config: `[websocket]\nsend_queue_len = 16\n` });
  });
  after(async () => {
    closeAll();
    assert.equal(await server.stop(), 0);
  });

  test("a burst of events gets every ack, in order, though the acks overflow the queue", T, async () => {
    const socket = connect(server.url);
    await connected(socket);
    const closes = [];
    socket.on("disconnect", (reason) => closes.push(reason));
    const N = 500;
    const acks = await Promise.all(
      Array.from({ length: N }, (_, i) => call(socket, "message:send", { channel_id: "burst", body: `m${i}` })),
    );
    assert.deepEqual(
      acks.map((a) => (a.ok ? a.message.body : a)),
      Array.from({ length: N }, (_, i) => `m${i}`),
    );
    const seqs = acks.map((a) => a.message.seq);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), "stored in the order sent");
    assert.deepEqual(closes, [], "not closed as a slow consumer");
    assert.ok(socket.connected);
  });
});
