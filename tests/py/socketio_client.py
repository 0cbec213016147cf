"""Drives a real `imks conformance` process with the Python `python-socketio` AsyncClient, a
Socket.IO v5 / Engine.IO v4 client independent of ours and of the official JS one, then stops it
with SIGTERM and checks the graceful shutdown.

Run by `make test` as `.venv/bin/python tests/py/socketio_client.py path/to/imks`; exits non-zero
on the first failed check. Every wait is bounded; the whole run is capped at RUN_TIMEOUT seconds.
"""

import asyncio
import collections
import os
import re
import signal
import subprocess
import sys
import threading

import aiohttp
import socketio

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/debug/imks"
STARTUP_TIMEOUT = 5.0
WAIT = 5.0  # the bound on any single wait for the server
RUN_TIMEOUT = 20.0


class Server:
    """`imks conformance` on a free port; its output is drained by a thread and kept for errors."""

    def __init__(self):
        env = dict(os.environ, RUST_LOG="info", IMKS_SERVER__SHARDS="2", IMKS_SERVER__PIN_THREADS="false")
        self.proc = subprocess.Popen(
            [BIN, "conformance", "--port", "0", "--ping-interval", "2000", "--ping-timeout", "2000"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        self.log = collections.deque(maxlen=200)
        self.addr = None
        self.listening = threading.Event()
        # One thread reads all output, so that a full pipe never blocks the server's logging
        # and a silent server cannot hang the start-up wait.
        threading.Thread(target=self._drain, daemon=True).start()
        if not self.listening.wait(STARTUP_TIMEOUT) or self.addr is None:
            self.proc.kill()
            raise SystemExit(f"imks did not report its address (status {self.proc.wait()}):\n{self.output()}")
        self.url = f"http://{self.addr}"

    def _drain(self):
        for line in self.proc.stdout:
            self.log.append(line)
            if self.addr is None:
                m = re.search(r"imks listening addr=(\S+)", line)
                if m:
                    self.addr = m.group(1)
                    self.listening.set()
        self.listening.set()  # end of output: the process is gone

    def output(self):
        return "".join(self.log)

    async def health(self):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{self.url}/health", timeout=aiohttp.ClientTimeout(total=WAIT)) as res:
                assert res.status == 200, res.status
                return await res.json()


class Inbox:
    """Records every event of the given names a client receives on a namespace, in order."""

    def __init__(self, client, events, namespace="/"):
        self.queues = {}
        for name in events:
            q = self.queues[name] = asyncio.Queue()
            client.on(name, self._recorder(q), namespace=namespace)

    @staticmethod
    def _recorder(q):
        def record(*args):
            q.put_nowait(list(args))
        return record

    async def next(self, event):
        try:
            return await asyncio.wait_for(self.queues[event].get(), WAIT)
        except asyncio.TimeoutError:
            raise AssertionError(f"no {event!r} event within {WAIT}s") from None


def expect(got, want):
    if got != want:
        raise AssertionError(f"expected {short(want)}, got {short(got)}")


def short(value, limit=300):
    r = repr(value)
    return r if len(r) <= limit else f"{r[:limit]}... ({len(r)} chars)"


async def call(client, event, data):
    """Emits with an ack request and returns the ack: one argument as is, several as a tuple."""
    try:
        return await client.call(event, data, timeout=WAIT)
    except socketio.exceptions.TimeoutError:
        raise AssertionError(f"no ack for {event!r} within {WAIT}s") from None


clients = []


def new_client():
    client = socketio.AsyncClient(reconnection=False, logger=False, engineio_logger=False)
    clients.append(client)
    return client


async def connect(client, url, **kwargs):
    await asyncio.wait_for(client.connect(url, wait_timeout=WAIT, **kwargs), WAIT + 1)


async def polling_then_websocket(server):
    client = new_client()
    inbox = Inbox(client, ["auth", "message-back"])
    await connect(client, server.url)  # default transports: polling, then the upgrade
    expect(await inbox.next("auth"), [{}])
    assert client.connected
    # python-engineio upgrades inside connect(); a failed upgrade would leave it on polling.
    assert client.transport() == "websocket", client.transport()
    await client.emit("message", "after upgrade")
    expect(await inbox.next("message-back"), ["after upgrade"])
    await client.emit("message", (1, "2", {"3": [True]}))
    expect(await inbox.next("message-back"), [1, "2", {"3": [True]}])
    await client.disconnect()
    print("ok  polling, upgrade to websocket, auth {}, message -> message-back")


async def websocket_with_auth(server):
    client = new_client()
    inbox = Inbox(client, ["auth"])
    await connect(client, server.url, transports=["websocket"], auth={"token": "123"})
    expect(await inbox.next("auth"), [{"token": "123"}])
    assert client.transport() == "websocket", client.transport()
    await client.disconnect()
    print("ok  websocket only, auth {token: 123} comes back in the auth event")


async def acks(server):
    client = new_client()
    seen = []
    second = asyncio.Event()

    @client.on("emit-with-ack")
    def on_emit_with_ack(*args):
        seen.append(list(args))
        if len(seen) >= 2:
            second.set()
        # The return value is the ack when the server asked for one.
        return "acked", 42

    await connect(client, server.url)
    # `call` returns the ack arguments as a tuple when there are several.
    args = (1, "2", {"3": [False]})
    expect(await call(client, "message-with-ack", args), args)
    expect(await call(client, "echo-ack", "one"), "one")
    # emit with a callback gets the ack arguments spread.
    acked = asyncio.get_running_loop().create_future()
    await client.emit("echo-ack", ({"a": [1, None]}, "b"), callback=lambda *a: acked.set_result(list(a)))
    expect(await asyncio.wait_for(acked, WAIT), [{"a": [1, None]}, "b"])
    # Server-to-client ack: the server emits with an ack request, then emits what we acked.
    await client.emit("emit-with-ack", "please ack")
    try:
        await asyncio.wait_for(second.wait(), WAIT)
    except asyncio.TimeoutError:
        raise AssertionError(f"second emit-with-ack not received, got {seen}") from None
    assert seen == [["please ack"], ["acked", 42]], seen
    await client.disconnect()
    print("ok  client acks (call, emit callback, several args) and server-to-client ack")


async def binary(server):
    a = b"\x00\x01\x02\xff"
    b = "héllo".encode()
    big = os.urandom(200_000)
    for transports in (["websocket"], ["polling"]):
        client = new_client()
        inbox = Inbox(client, ["message-back"])
        await connect(client, server.url, transports=transports)
        assert client.transport() == transports[0], client.transport()
        await client.emit("message", (a, {"nested": b}, "text", 7))
        expect(await inbox.next("message-back"), [a, {"nested": b}, "text", 7])
        await client.emit("message", big)
        expect(await inbox.next("message-back"), [big])
        expect(await call(client, "message-with-ack", a), a)
        expect(await call(client, "message-with-ack", (a, {"x": [b]})), (a, {"x": [b]}))
        await client.disconnect()
    print("ok  binary events and binary acks over websocket and polling (200 kB included)")


async def namespaces(server):
    client = new_client()
    root = Inbox(client, ["auth"], namespace="/")
    custom = Inbox(client, ["auth"], namespace="/custom")
    await connect(client, server.url, namespaces=["/", "/custom"], auth={"token": "abc"})
    expect(await custom.next("auth"), [{"token": "abc"}])
    expect(await root.next("auth"), [{"token": "abc"}])
    assert set(client.namespaces) == {"/", "/custom"}, client.namespaces
    await client.disconnect()

    only_custom = new_client()
    custom = Inbox(only_custom, ["auth"], namespace="/custom")
    await connect(only_custom, server.url, namespaces=["/custom"], transports=["websocket"])
    expect(await custom.next("auth"), [{}])
    await only_custom.disconnect()

    bad = new_client()
    errors = []
    bad.on("connect_error", lambda *data: errors.append(list(data)), namespace="/random")
    try:
        await connect(bad, server.url, namespaces=["/random"])
        raise AssertionError("connecting to /random should fail")
    except socketio.exceptions.ConnectionError as e:
        assert "/random" in str(e), e
    assert errors == [[{"message": "Invalid namespace"}]], errors
    print("ok  /custom namespace (auth), unknown namespace refused with 'Invalid namespace'")


async def rooms(server, n=24):
    members = [new_client() for _ in range(n)]
    counts = [collections.Counter() for _ in range(n)]
    got = [collections.defaultdict(asyncio.Event) for _ in range(n)]

    def on_msg(i):
        def handler(m):
            counts[i][m["seq"]] += 1
            got[i][m["seq"]].set()
        return handler

    for i, c in enumerate(members):
        c.on("msg", on_msg(i))
    outsider = new_client()
    outsider_got = []
    outsider.on("msg", lambda m: outsider_got.append(m))

    # Half go through the polling handshake and the upgrade, half straight to websocket.
    await asyncio.gather(*(connect(c, server.url, transports=None if i % 2 else ["websocket"])
                           for i, c in enumerate(members)))
    await connect(outsider, server.url)
    joined = await asyncio.gather(*(call(c, "join", "r1") for c in members))
    assert joined == ["ok"] * n, joined

    health = await server.health()
    per_shard = [s["connections"] for s in health["shards"]]
    assert len(per_shard) == 2 and all(c > 0 for c in per_shard), f"clients on every shard: {health}"
    # The /health request is itself a connection on one shard; WebSockets are only our clients.
    assert all(s["websockets"] > 0 for s in health["shards"]), f"websockets on every shard: {health}"

    async def wait_all(seq):
        try:
            await asyncio.wait_for(asyncio.gather(*(g[seq].wait() for g in got)), WAIT)
        except asyncio.TimeoutError:
            missing = [i for i, g in enumerate(got) if not g[seq].is_set()]
            raise AssertionError(f"seq {seq!r} not received by members {missing}") from None

    await members[0].emit("publish", {"room": "r1", "seq": 1})
    await members[-1].emit("publish", {"room": "r1", "seq": 2})
    await wait_all(1)
    await wait_all(2)
    # Fences from the same two senders, published after 1 and 2: once every member has them,
    # a duplicate of 1 or 2 would have shown up.
    await members[0].emit("publish", {"room": "r1", "seq": "fence-a"})
    await members[-1].emit("publish", {"room": "r1", "seq": "fence-b"})
    await wait_all("fence-a")
    await wait_all("fence-b")
    expect(await call(outsider, "echo-ack", "sync"), "sync")
    for i, c in enumerate(counts):
        assert c == {1: 1, 2: 1, "fence-a": 1, "fence-b": 1}, f"member {i} got {dict(c)}"
    assert outsider_got == [], f"a socket outside the room got {outsider_got}"
    await asyncio.gather(*(c.disconnect() for c in members + [outsider]))
    ws_per_shard = [s["websockets"] for s in health["shards"]]
    print(f"ok  room broadcast: {n} members (websockets per shard {ws_per_shard}) get each publish exactly once, outsider none")


async def sigterm(server):
    client = new_client()
    gone = asyncio.Event()
    client.on("disconnect", lambda *reason: gone.set())
    await connect(client, server.url, transports=["websocket"])
    expect(await call(client, "echo-ack", "before"), "before")
    server.proc.send_signal(signal.SIGTERM)
    loop = asyncio.get_running_loop()
    try:
        status = await asyncio.wait_for(loop.run_in_executor(None, server.proc.wait), 10)
    except asyncio.TimeoutError:
        raise AssertionError("imks did not exit within 10 s of SIGTERM") from None
    assert status == 0, f"imks exited with {status}"
    try:
        await asyncio.wait_for(gone.wait(), WAIT)
    except asyncio.TimeoutError:
        raise AssertionError("the connected client was not disconnected on shutdown") from None
    print("ok  SIGTERM: the connected client is disconnected, process exits 0")


async def main(server):
    try:
        await polling_then_websocket(server)
        await websocket_with_auth(server)
        await acks(server)
        await binary(server)
        await namespaces(server)
        await rooms(server)
        await sigterm(server)
    finally:
        for c in clients:
            if c.connected:
                try:
                    await asyncio.wait_for(c.disconnect(), 2)
                except Exception:
                    pass


if __name__ == "__main__":
    srv = Server()
    try:
        asyncio.run(asyncio.wait_for(main(srv), RUN_TIMEOUT))
    except BaseException:
        print(f"--- imks output (last lines) ---\n{srv.output()}", file=sys.stderr)
        raise
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
