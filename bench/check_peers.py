#!/usr/bin/env python3
"""Check that every benchmark server answers the bench events the same way, with raw frames.

    .venv/bin/python bench/check_peers.py     (needs the `websockets` package: make test-deps)

Starts each server built by bench/run on a free 127.0.0.1 port and checks, over Socket.IO v5 on
Engine.IO v4 (imks, socket.io, socketioxide): `echo-ack` acked with the same arguments, `join`
and `leave` acked "ok" when asked, `publish` → `msg` with the same object to the room, sender
included, and nothing for a room the socket left; over raw WebSocket (imks, baseline): `/ws-echo`
and, for the baseline, the `/ws-fanout` convention of loadgen/README.md. Then the two-node
clusters of the cross-node scenarios (imks over the local NATS, the peers with their Redis
adapters): a `publish` on node 1 reaches a member on node 2 with the same bytes, and not the
publisher, which is no member.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / "peers"
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
BENCH_TARGET = Path(os.environ.get("BENCH_TARGET_DIR") or ROOT / "bench" / "target")

SERVERS = {
    "imks": ([str(TARGET / "release/imks"), "conformance", "--port", "{port}",
              "--ping-interval", "25000", "--ping-timeout", "20000"], ROOT, {"sio", "ws-echo"}),
    "socketio-node": (["node", "server.mjs", "{port}"], PEERS / "socketio-node", {"sio"}),
    "socketioxide": ([str(BENCH_TARGET / "release/imks-bench-socketioxide"), "{port}"], ROOT, {"sio"}),
    "baseline": ([str(BENCH_TARGET / "release/imks-bench-baseline"), "{port}"], ROOT, {"ws-echo", "ws-fanout"}),
}


# Two nodes each, over the local broker (scripts/ensure-nats.sh, scripts/ensure-redis.sh).
REDIS = {"BENCH_REDIS_URL": "redis://127.0.0.1:6379"}
CLUSTERS = {
    "imks-cluster": (SERVERS["imks"][0], ROOT,
                     {"IMKS_CLUSTER__BACKEND": "nats", "IMKS_CLUSTER__PREFIX": f"check{os.getpid()}"}),
    "socketio-node-redis": (SERVERS["socketio-node"][0], PEERS / "socketio-node", REDIS),
    "socketioxide-redis": (SERVERS["socketioxide"][0], ROOT, REDIS),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recv(ws, timeout: float = 5):
    """The next message, answering Engine.IO pings and skipping the `auth` event that imks's
    conformance application emits after CONNECT (part B item 2)."""
    while True:
        got = ws.recv(timeout=timeout)
        if got == "2":
            ws.send("3")
        elif not (isinstance(got, str) and got.startswith('42["auth",')):
            return got


def expect(ws, want: str, what: str) -> None:
    got = recv(ws)
    if got != want:
        raise AssertionError(f"{what}: expected {want!r}, got {got!r}")


def sio_open(stack: ExitStack, url: str):
    ws = stack.enter_context(connect(f"{url}/socket.io/?EIO=4&transport=websocket", open_timeout=5))
    first = recv(ws)
    assert first.startswith("0{"), first
    ws.send("40")
    answer = recv(ws)
    assert answer.startswith('40{"sid":'), answer
    return ws


def check_sio(url: str) -> None:
    with ExitStack() as stack:
        check_sio_events(sio_open(stack, url), sio_open(stack, url))


def check_sio_events(a, b) -> None:
    args = '1,"2",{"3":[true]}'
    a.send(f'421["echo-ack",{args}]')
    expect(a, f"431[{args}]", "echo-ack, three arguments")
    a.send('422["echo-ack",{"k":"v"}]')
    expect(a, '432[{"k":"v"}]', "echo-ack, one object")
    a.send('423["join","r1"]')
    expect(a, '433["ok"]', "join with ack")
    b.send('42["join","r1"]')  # no ack asked: no answer
    b.send('424["echo-ack","sync"]')
    expect(b, '434["sync"]', "join without ack answers nothing")
    obj = json.dumps({"room": "r1", "pub": 0, "seq": 1, "pad": "xx"}, separators=(",", ":"))
    b.send(f'42["publish",{obj}]')
    expect(a, f'42["msg",{obj}]', "publish reaches a member")
    expect(b, f'42["msg",{obj}]', "publish reaches the sender when it is a member")
    a.send('425["leave","r1"]')
    expect(a, '435["ok"]', "leave with ack")
    b.send(f'42["publish",{obj}]')
    expect(b, f'42["msg",{obj}]', "publish after the other left")
    a.send('426["echo-ack","sync"]')
    expect(a, '436["sync"]', "a socket that left gets nothing")


def check_cluster(node1: str, node2: str) -> None:
    with ExitStack() as stack:
        member, publisher = sio_open(stack, node2), sio_open(stack, node1)
        member.send('421["join","r1"]')
        expect(member, '431["ok"]', "join on node 2")
        # Node 2's interest reaches the broker a moment after the join is acked (imks subscribes
        # per room): publish probes until one arrives.
        deadline = time.monotonic() + 10
        probe = 0
        while True:
            probe += 1
            publisher.send(f'42["publish",{{"room":"r1","probe":{probe}}}]')
            try:
                got = recv(member, timeout=0.1)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise AssertionError("no publish on node 1 reached node 2 in 10 s") from None
        obj = json.dumps({"room": "r1", "pub": 0, "seq": 1, "pad": "xx"}, separators=(",", ":"))
        publisher.send(f'42["publish",{obj}]')
        while got != f'42["msg",{obj}]':
            if not got.startswith('42["msg",{"room":"r1","probe":'):
                raise AssertionError(f"cross-node publish: expected {obj!r}, got {got!r}")
            got = recv(member)
        publisher.send('421["echo-ack","sync"]')
        expect(publisher, '431["sync"]', "the publisher, no member, gets nothing")


def check_ws_echo(url: str) -> None:
    with connect(f"{url}/ws-echo", open_timeout=5) as ws:
        ws.send(b"\x00\x01binary")
        expect(ws, b"\x00\x01binary", "binary echo")
        ws.send("text")
        expect(ws, "text", "text echo")


def check_ws_fanout(url: str) -> None:
    with connect(f"{url}/ws-fanout", open_timeout=5) as sub, connect(f"{url}/ws-fanout", open_timeout=5) as pub:
        sub.send('{"join":"r0"}')
        expect(sub, "ok", "raw join")
        text = '{"room":"r0","pub":0,"seq":1,"t":5,"pad":"xx"}'
        pub.send(text)
        expect(sub, text, "raw publish forwarded unchanged")


def start(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """Starts a server on a free port and waits until it accepts; returns it and its URL."""
    port = free_port()
    proc = subprocess.Popen([a.replace("{port}", str(port)) for a in cmd], cwd=cwd, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, IMKS_SERVER__SHARDS="1", **env))
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"ws://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise RuntimeError("server did not start") from None
            time.sleep(0.05)


def main() -> int:
    failed = 0
    runs = [(name, [(cmd, cwd, {})], speaks) for name, (cmd, cwd, speaks) in SERVERS.items()]
    runs += [(name, [(cmd, cwd, env)] * 2, {"cluster"}) for name, (cmd, cwd, env) in CLUSTERS.items()]
    for name, nodes, speaks in runs:
        procs: list[subprocess.Popen] = []
        try:
            urls = []
            for cmd, cwd, env in nodes:
                proc, url = start(cmd, cwd, env)
                procs.append(proc)
                urls.append(url)
            for check, fn in (("sio", check_sio), ("ws-echo", check_ws_echo), ("ws-fanout", check_ws_fanout),
                              ("cluster", check_cluster)):
                if check in speaks:
                    fn(*urls)
                    print(f"ok    {name:20} {check}")
        except Exception as e:  # noqa: BLE001 - report every server, then fail
            failed += 1
            print(f"FAIL  {name:20} {type(e).__name__}: {e}")
        finally:
            for proc in procs:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
