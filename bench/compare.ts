/**
 * Compares two builds of pgod and pgoctl, interleaved so that both see the same machine load,
 * on what load does not distort much: CPU time. Used for the before/after figures of
 * bench/README.md.
 *
 *   bun bench/compare.ts DIR_A DIR_B [ROUNDS=6]
 *
 * DIR_A and DIR_B each hold a `pgod` and a `pgoctl`. Per round and build: pgod's start-up to its
 * SSH port accepting (wall, and pgod's CPU by then), three `pgoctl ping`s (wall, and the client's
 * CPU), and pgod idle for 15 s with one service (CPU per second, main-thread wake-ups per second).
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { cleanupAll, composeFile, fakeEngine, Pgod, Repo, RUN_PREFIX, tempDir, waitFor } from "./lib.ts";
import { makeKey } from "../test/kit/keys.ts";
import { canConnect, cpuTimes, freePort, run } from "../test/kit/process.ts";
import { median } from "../test/kit/stats.ts";

const [dirA, dirB] = process.argv.slice(2);
const rounds = Number(process.argv[4] ?? 6);
if (!dirA || !dirB) {
  console.error("Usage: bun bench/compare.ts DIR_A DIR_B [ROUNDS]");
  process.exit(64);
}

/** Voluntary plus involuntary context switches of a process's main thread. */
function wakeups(pid: number): number {
  const s = readFileSync(`/proc/${pid}/task/${pid}/status`, "utf8");
  return Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(s)?.[1]) + Number(/^nonvoluntary_ctxt_switches:\s+(\d+)/m.exec(s)?.[1]);
}

const results = new Map<string, number[]>();
const add = (k: string, v: number): void => void results.set(k, [...(results.get(k) ?? []), v]);

try {
  const engine = await fakeEngine("cmp");
  const root = await tempDir("cmp");
  const key = await makeKey(root, "k");
  const repo = await Repo.create(join(root, "repo"), { "compose.yaml": composeFile(0), "ssh/k.pub": key.pub });
  const name = `${RUN_PREFIX}cmp`;
  const services = [{ name, repository: repo.bare }];
  for (let i = 0; i < rounds; i++) {
    for (const [label, dir] of [["A", dirA], ["B", dirB]] as const) {
      const port = await freePort();
      const pg = await Pgod.start({ root, engine, interval: "10m", services, ssh: `127.0.0.1:${port}`, tag: `${label}-${i}`, command: [join(dir, "pgod")] });
      const at = await waitFor("the SSH port to accept", async () => ((await canConnect(port)) ? performance.now() : undefined), 60_000, 1);
      add(`${label} pgod start-up to SSH accept, wall ms`, at - pg.startedAt);
      add(`${label} pgod start-up to SSH accept, CPU ms`, cpuTimes(pg.pid).self * 1000);
      await pg.waitForLog(/msg=deployed /, { timeoutMs: 120_000 });
      for (let j = 0; j < 3; j++) {
        const tf = join(root, "time");
        const r = await run([
          "/usr/bin/time", "-f", "%U %S", "-o", tf, join(dir, "pgoctl"), "-i", key.file, "-p", String(port), "--known-hosts",
          join(root, "known_hosts"), `127.0.0.1:${name}//ping`,
        ], { check: false, timeoutMs: 60_000 });
        if (!r.stdout.startsWith("pong")) throw new Error(`pgoctl ping failed: ${r.stderr}`);
        const [u, s] = readFileSync(tf, "utf8").trim().split("\n").at(-1)!.split(" ").map(Number);
        add(`${label} pgoctl ping, wall ms`, r.ms);
        add(`${label} pgoctl ping, CPU ms`, (u! + s!) * 1000);
      }
      await Bun.sleep(2000);
      const c0 = cpuTimes(pg.pid);
      const w0 = wakeups(pg.pid);
      await Bun.sleep(15_000);
      add(`${label} pgod idle, CPU ms per s`, ((cpuTimes(pg.pid).self - c0.self) * 1000) / 15);
      add(`${label} pgod idle, main-thread wake-ups per s`, (wakeups(pg.pid) - w0) / 15);
      add(`${label} pgod threads`, readdirSync(`/proc/${pg.pid}/task`).length);
      await pg.stop();
    }
  }
  const keys = [...new Set([...results.keys()].map((k) => k.slice(2)))];
  console.log(`| measure (median of ${rounds} rounds) | A: ${dirA} | B: ${dirB} |`);
  console.log("| --- | --- | --- |");
  for (const k of keys) {
    console.log(`| ${k} | ${median(results.get(`A ${k}`) ?? []).toFixed(1)} | ${median(results.get(`B ${k}`) ?? []).toFixed(1)} |`);
  }
} finally {
  await cleanupAll();
}
