"""Drives a real `imks conformance` process with the Python `websockets` client, an RFC 6455
implementation independent of ours (the echo endpoint and the native protocol at /ws), then
stops it with SIGTERM and checks the graceful shutdown.

Run by `make test` as `.venv/bin/python tests/py/run.py path/to/imks`; exits non-zero
on the first failed check.
"""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time

import websockets
from websockets.exceptions import ConnectionClosed

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/debug/imks"
STARTUP_TIMEOUT = 30.0


def start_server():
    env = dict(os.environ, RUST_LOG="info", IMKS_SERVER__SHARDS="2", IMKS_SERVER__PIN_THREADS="false")
    proc = subprocess.Popen([BIN, "conformance", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, text=True)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if not line:
            raise SystemExit(f"imks exited before listening (status {proc.wait()}):\n{''.join(seen)}")
        m = re.search(r"imks listening addr=(\S+)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise SystemExit("imks did not report its address in time")


async def echo_cases(url):
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send("żółw ✓ 🐢")
        assert await ws.recv() == "żółw ✓ 🐢"
        await ws.send(b"\x00\x01\xff")
        assert await ws.recv() == b"\x00\x01\xff"
        big = os.urandom(500_000)
        await ws.send(big)
        assert await ws.recv() == big
        # A fragmented text message comes back whole.
        await ws.send(iter(["frag", "ment", "ed"]))
        assert await ws.recv() == "fragmented"
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 5)
        await ws.send("")
        assert await ws.recv() == ""
    assert ws.close_code == 1000, ws.close_code
    print("ok  echo: text, utf-8, binary, 500 kB, fragments, ping, empty, close 1000")


async def many_clients(url, n=50):
    async def one(i):
        async with websockets.connect(url) as ws:
            for j in range(20):
                msg = f"{i}:{j}"
                await ws.send(msg)
                assert await ws.recv() == msg
    await asyncio.gather(*(one(i) for i in range(n)))
    print(f"ok  {n} concurrent clients x 20 round trips")


async def bad_utf8_gets_1007(url):
    async with websockets.connect(url) as ws:
        # `text=True` sends the bytes as a text frame as they are, invalid UTF-8 included.
        await ws.send(b"\xff\xfe", text=True)
        try:
            await asyncio.wait_for(ws.recv(), 5)
            raise AssertionError("expected the server to close")
        except ConnectionClosed as e:
            assert e.rcvd is not None and e.rcvd.code == 1007, e
    print("ok  invalid UTF-8 closes with 1007")


async def native_chat(base):
    """The native protocol at /ws, anonymous (the conformance application's auth): two users
    exchange a message with sent, delivered and read acks, and presence."""
    async def hello(ws):
        msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert msg["type"] == "connected", msg
        return msg["data"]["userId"]

    async def next_of(ws, kind):
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if msg["type"] == kind:
                return msg

    async with websockets.connect(f"{base}/ws") as a, websockets.connect(f"{base}/ws") as b:
        a_id, b_id = await hello(a), await hello(b)
        assert a_id != b_id and a_id.startswith("anon-"), (a_id, b_id)
        await a.send(json.dumps({"type": "presence:subscribe", "data": {"userIds": [b_id]}}))
        state = await next_of(a, "presence")
        assert state["data"] == {"userId": b_id, "online": True}, state
        await a.send(json.dumps({"type": "chat", "id": "1",
                                 "data": {"msgId": "py-1", "toUserId": b_id, "content": "hello from python"}}))
        sent = await next_of(a, "ack")
        assert (sent["id"], sent["data"]["status"], sent["data"]["clientMsgId"]) == ("1", "sent", "py-1"), sent
        got = await next_of(b, "chat")
        assert (got["data"]["fromUserId"], got["data"]["content"]) == (a_id, "hello from python"), got
        assert got["data"]["msgId"] == sent["data"]["msgId"]
        delivered = await next_of(a, "ack")
        assert delivered["data"]["status"] == "delivered", delivered
        await b.send(json.dumps({"type": "read", "data": {"peerId": a_id, "msgIds": [got["data"]["msgId"]]}}))
        read = await next_of(a, "ack")
        assert (read["data"]["status"], read["data"]["msgId"]) == ("read", sent["data"]["msgId"]), read
        await b.send("{not json")
        err = await next_of(b, "error")
        assert err["data"]["code"] == "bad_json", err
        await b.close()
        off = await next_of(a, "offline")
        assert off["data"]["userId"] == b_id, off
    print("ok  native protocol: chat with sent/delivered/read acks, presence, errors")


async def shutdown_closes_1001(proc, url):
    async with websockets.connect(url) as ws:
        await ws.send("before")
        assert await ws.recv() == "before"
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(ws.recv(), 10)
            raise AssertionError("expected a close frame")
        except ConnectionClosed as e:
            assert e.rcvd is not None and e.rcvd.code == 1001, e
    status = proc.wait(timeout=15)
    assert status == 0, f"imks exited with {status}"
    print("ok  SIGTERM: clients get 1001, process exits 0")


async def main():
    proc, addr = start_server()
    url = f"ws://{addr}/ws-echo"
    try:
        await echo_cases(url)
        await many_clients(url)
        await bad_utf8_gets_1007(url)
        await native_chat(f"ws://{addr}")
        await shutdown_closes_1001(proc, url)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
