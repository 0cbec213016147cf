// Starts `imks conformance --port 0` for a test file and stops it afterwards.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";

export async function startImks({ pingInterval = 2000, pingTimeout = 2000, shards = 2, extraArgs = [] } = {}) {
  const bin = process.env.IMKS_TEST_BINARY ?? "../../target/debug/imks";
  const env = { ...process.env, RUST_LOG: "info", IMKS_SERVER__SHARDS: String(shards), IMKS_SERVER__PIN_THREADS: "false" };
  delete env.IMKS_TEST_BINARY;
  const proc = spawn(
    bin,
    ["conformance", "--port", "0", "--ping-interval", String(pingInterval), "--ping-timeout", String(pingTimeout), ...extraArgs],
    { env, stdio: ["ignore", "pipe", "inherit"] },
  );
  const lines = createInterface({ input: proc.stdout });
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("imks did not report its address")), 30000);
    proc.once("exit", (code) => reject(new Error(`imks exited with ${code}`)));
    lines.on("line", (line) => {
      const m = /imks listening addr=(\S+)/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve(`http://${m[1]}`);
      }
    });
  });
  return {
    url,
    async health() {
      const res = await fetch(`${url}/health`);
      return res.json();
    },
    async stop() {
      const exited = new Promise((resolve) => proc.once("exit", resolve));
      proc.kill("SIGTERM");
      return exited;
    },
  };
}
