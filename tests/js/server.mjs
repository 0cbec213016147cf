// Starts imks for a test file and stops it afterwards: `imks conformance --port 0`
// (`startImks`), or `imks serve` with a TOML configuration written to a temporary directory
// (`startImksServe`). Settings beyond the command line go in as `IMKS_*` variables (`env`).
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const binary = () => process.env.IMKS_TEST_BINARY ?? "../../target/debug/imks";

function baseEnv(shards, extra = {}) {
  const env = { ...process.env, RUST_LOG: "info", IMKS_SERVER__SHARDS: String(shards), IMKS_SERVER__PIN_THREADS: "false", ...extra };
  delete env.IMKS_TEST_BINARY;
  return env;
}

// Spawns imks and waits for the address of shard 0 (`imks listening addr=...`) and of every
// shard in `ownAddress` (`imks shard listening shard=N addr=...`).
async function spawnImks(args, env, ownAddress = []) {
  const proc = spawn(binary(), args, { env, stdio: ["ignore", "pipe", "inherit"] });
  const lines = createInterface({ input: proc.stdout });
  const urls = await new Promise((resolve, reject) => {
    // Never leave a server behind when it does not come up as expected.
    const fail = (e) => {
      proc.kill("SIGKILL");
      reject(e);
    };
    const found = new Map();
    const timer = setTimeout(() => fail(new Error("imks did not report its addresses")), 30000);
    proc.once("exit", (code) => reject(new Error(`imks exited with ${code}`)));
    lines.on("line", (line) => {
      const first = /imks listening addr=(\S+)/.exec(line);
      if (first && !found.has(0)) found.set(0, `http://${first[1]}`);
      const other = /imks shard listening shard=(\d+) addr=(\S+)/.exec(line);
      if (other && !found.has(Number(other[1]))) found.set(Number(other[1]), `http://${other[2]}`);
      if (found.has(0) && ownAddress.every((i) => found.has(i))) {
        clearTimeout(timer);
        resolve(found);
      }
    });
  });
  const url = urls.get(0);
  // Sends `signal` and resolves with the exit code (null when a signal ended it).
  const kill = async (signal) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode;
    const done = new Promise((resolve) => proc.once("exit", resolve));
    proc.kill(signal);
    return done;
  };
  return {
    url,
    // The URL that reaches shard `i` (shard 0's when the shard has no address of its own).
    shardUrl: (i) => urls.get(i) ?? url,
    async health() {
      const res = await fetch(`${url}/health`);
      return res.json();
    },
    // The sum of every series of `name` (`name` alone, or with labels) in /metrics.
    async metric(name) {
      const text = await (await fetch(`${url}/metrics`)).text();
      let sum = 0;
      for (const line of text.split("\n")) {
        if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) sum += Number(line.slice(line.lastIndexOf(" ") + 1));
      }
      return sum;
    },
    kill,
    stop: () => kill("SIGTERM"),
  };
}

export async function startImks({ pingInterval = 2000, pingTimeout = 2000, shards = 2, extraArgs = [], env = {} } = {}) {
  return spawnImks(
    ["conformance", "--port", "0", "--ping-interval", String(pingInterval), "--ping-timeout", String(pingTimeout), ...extraArgs],
    baseEnv(shards, env),
  );
}

// `imks serve --config <dir>/imks.toml` listening on 127.0.0.1:0. With `shardListen` (one
// `IP:port` per shard, e.g. ["127.0.0.1:0", "127.0.0.2:0"]), each shard gets a shard file with
// its own address, so a client picks its shard by the URL it connects to (`shardUrl(i)`).
export async function startImksServe({ config = "", shards = 2, shardListen } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "imks-test-"));
  writeFileSync(join(dir, "imks.toml"), config);
  const own = [];
  if (shardListen) {
    mkdirSync(join(dir, "shards"));
    shardListen.forEach((addr, i) => {
      writeFileSync(join(dir, "shards", `shard-${i}.toml`), `listen = [${JSON.stringify(addr)}]\n`);
      if (i > 0) own.push(i);
    });
  }
  const env = { ...baseEnv(shards), IMKS_SERVER__LISTEN: '["127.0.0.1:0"]' };
  try {
    const server = await spawnImks(["serve", "--config", join(dir, "imks.toml")], env, own);
    const stop = server.stop;
    server.stop = async () => {
      const code = await stop();
      rmSync(dir, { recursive: true, force: true });
      return code;
    };
    return server;
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}
