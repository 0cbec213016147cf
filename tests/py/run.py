"""Drives a real `imks conformance` process with the Python `websockets` client, an RFC 6455
implementation independent of ours, then stops it with SIGTERM and checks the graceful shutdown.

Run by `make test` as `.venv/bin/python tests/py/run.py path/to/imks`; exits non-zero
on the first failed check.
"""

import asyncio
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
        await shutdown_closes_1001(proc, url)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
