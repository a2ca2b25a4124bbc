/**
 * Profiles pgod's idle cycle: runs src/cmd/pgod.ts under `bun --cpu-prof` with N idle services on
 * the fake docker shim for T seconds, and writes the profile (Chrome .cpuprofile and a markdown
 * summary) to DIR. Usage: bun bench/profile.ts [N=20] [T=30] [DIR=bench/profiles]
 */
import { mkdir } from "node:fs/promises";
import { join, resolve } from "node:path";
import { cleanupAll, composeFile, cpuDelta, fakeEngine, POLL, Pgod, Repo, ROOT, RUN_PREFIX, tempDir } from "./lib.ts";
import { cpuTimes, run } from "../test/kit/process.ts";

const n = Number(process.argv[2] ?? 20);
const seconds = Number(process.argv[3] ?? 30);
const out = resolve(process.argv[4] ?? join(ROOT, "bench/profiles"));
try {
  await mkdir(out, { recursive: true });
  const engine = await fakeEngine("prof");
  const root = await tempDir("prof");
  const template = await Repo.create(join(root, "template"), { "compose.yaml": composeFile(0) });
  const bares = Array.from({ length: n }, (_, i) => join(root, `remote-${i}.git`));
  await run(["bash", "-c", 'src=$1; shift; for d; do cp -a "$src" "$d" || exit 1; done', "_", template.bare, ...bares]);
  const pg = await Pgod.start({
    root, engine, interval: "1s",
    services: bares.map((b, i) => ({ name: `${RUN_PREFIX}p-${i}`, repository: b })),
    command: [process.execPath, "--cpu-prof", "--cpu-prof-md", `--cpu-prof-dir=${out}`, join(ROOT, "src/cmd/pgod.ts")],
  });
  await pg.waitForLog(/msg=deployed /, { count: n, timeoutMs: 300_000 });
  await pg.waitForLog(POLL, { count: 2 * n, since: pg.mark() });
  const m0 = pg.mark();
  const c0 = cpuTimes(pg.pid);
  await Bun.sleep(seconds * 1000);
  const d = cpuDelta(c0, cpuTimes(pg.pid));
  const cycles = pg.lines(POLL, m0).length / n;
  await pg.stop();
  console.log(`${n} services, ${cycles.toFixed(1)} cycles in ${seconds} s: pgod ${(d.self * 1000 / cycles / n).toFixed(2)} ms, children ${(d.children * 1000 / cycles / n).toFixed(2)} ms per service-cycle`);
  console.log(`profile written to ${out} (the whole run, start-up included)`);
} finally {
  await cleanupAll();
}
