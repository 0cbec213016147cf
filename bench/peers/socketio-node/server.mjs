// socket.io 4.8 peer for bench/run: the bench events of shared/conformance-server.md part B
// item 10, on 127.0.0.1:<port>. Usage: node server.mjs PORT
//
// With BENCH_REDIS_URL (redis://HOST:PORT) it is one node of a cluster: broadcasts go to the
// other nodes through `@socket.io/redis-adapter` on that Redis, as a socket.io user scales out.
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[2] ?? 3000);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error(`usage: node server.mjs PORT (got ${process.argv[2]})`);
  process.exit(2);
}

const httpServer = createServer();
// Relaxed heartbeats, as imks is started with in the benchmarks.
const io = new Server(httpServer, { pingInterval: 25000, pingTimeout: 20000 });

const redisUrl = process.env.BENCH_REDIS_URL;
if (redisUrl) {
  const { createClient } = await import("redis");
  const { createAdapter } = await import("@socket.io/redis-adapter");
  // The adapter's documented set-up: one client publishes, a duplicate subscribes.
  const pubClient = createClient({ url: redisUrl });
  const subClient = pubClient.duplicate();
  for (const c of [pubClient, subClient]) c.on("error", (e) => console.error(`redis: ${e.message}`));
  await Promise.all([pubClient.connect(), subClient.connect()]);
  io.adapter(createAdapter(pubClient, subClient));
}

io.on("connection", (socket) => {
  // echo-ack: ack with the same arguments.
  socket.on("echo-ack", (...args) => {
    const ack = typeof args[args.length - 1] === "function" ? args.pop() : null;
    if (ack) ack(...args);
  });
  // join / leave: room membership, acked "ok" when an ack is asked for.
  socket.on("join", (room, ack) => {
    socket.join(String(room));
    if (typeof ack === "function") ack("ok");
  });
  socket.on("leave", (room, ack) => {
    socket.leave(String(room));
    if (typeof ack === "function") ack("ok");
  });
  // publish: emit `msg` with the same object to every member of obj.room, the sender included.
  socket.on("publish", (obj) => {
    if (obj && typeof obj === "object" && obj.room !== undefined) {
      io.to(String(obj.room)).emit("msg", obj);
    }
  });
});

httpServer.listen(port, "127.0.0.1", () => {
  console.log(`socket.io listening on 127.0.0.1:${port}${redisUrl ? ` (redis adapter on ${redisUrl})` : ""}`);
});

const stop = () => {
  io.close();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
