/**
 * A smoke run of the benchmark (`bench/run --quick`): tiny sizes, the fake docker shim instead of
 * the engine, every section once. Its figures are not checked (times are noisy); that it runs to
 * the end, prints its whole table and leaves nothing behind is. Needs `bash scripts/build.sh`.
 */
import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { resolve } from "node:path";
import { run } from "./kit/process.ts";

const ROOT = resolve(import.meta.dir, "..");

test("`bench/run --quick` prints the machine and a row for every figure, and cleans up", async () => {
  const { code, stdout, stderr } = await run([resolve(ROOT, "bench/run"), "--quick", "--deadline=150"], { cwd: ROOT, check: false });
  if (code !== 0) console.error(stderr);
  expect({ code, failed: stderr.includes("bench: failed") }).toEqual({ code: 0, failed: false });
  for (const machine of ["cores", "model", "memory", "kernel", "bun", "docker"]) {
    expect(stdout).toMatch(new RegExp(`^\\| ${machine} \\| .+ \\|$`, "m"));
  }
  const figures = [
    /^\| 1 \| idle cycle CPU, 2 services, fake engine, remotes over http .*\| \d+\.\d+ s \| \d+\.\d+ s \|/m,
    /^\| 1 \| +ratio ours \/ baseline \| [\d.]+ % \|/m,
    /^\| 1 \| +`docker compose up` runs while idle \| 0 \|/m,
    /^\| 2 \| idle cycle, fake shim, 2 services, remotes over http: .*MiB \|/m,
    /^\| 3 \| push to running via `pgoctl sync`: total \/ our overhead \| \d+ ms \/ -?\d+ ms \|/m,
    /^\| 3 \| push to running via signed webhook: total \/ our overhead \| \d+ ms \/ -?\d+ ms \|/m,
    /^\| 3 \| +processes pgod starts for such a deploy \(git and compose\) \| 11 \|/m,
    /^\| 4 \| ping via whole-process `dist\/pgoctl`, 1 client, p50 \/ p99 \(n=1\) \| [\d.]+ ms \/ [\d.]+ ms \|/m,
    /^\| 4 \| ping via OpenSSH `ssh`, .*\| [\d.]+ ms \/ [\d.]+ ms \|/m,
    /^\| 4 \| ping via in-process ssh2 client .*\| [\d.]+ ms \/ [\d.]+ ms \|/m,
    /^\| 4 \| ping throughput, 20 concurrent in-process clients \(20 requests\) \| \d+ req\/s \|/m,
    /^\| 4 \| +pgod CPU per request during that load \| [\d.]+ ms \|/m,
    /^\| 5 \| pgod RSS, 2 services idle .*\| [\d.]+ MiB \|/m,
    /^\| 5 \| start-up of dist\/pgod to SSH port accepting .*\| \d+ ms \|/m,
  ];
  for (const re of figures) expect(stdout).toMatch(re);
  // Every temp dir of the run is gone (their names start with "pgobench-").
  const prefix = /\bRUN_PREFIX=(\S+)/.exec(stderr)?.[1];
  expect(prefix).toBeDefined();
  expect(readdirSync(tmpdir()).filter((d) => d.startsWith(prefix!))).toEqual([]);
  // ... and so is every process it started (they all have a path under those dirs in argv).
  const left = readdirSync("/proc").filter((p) => /^\d+$/.test(p)).filter((p) => {
    try {
      return readFileSync(`/proc/${p}/cmdline`, "utf8").includes(prefix!);
    } catch {
      return false;
    }
  });
  expect(left).toEqual([]);
}, 200_000);
