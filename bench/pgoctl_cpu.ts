/**
 * Compares builds of pgoctl as whole processes against one pgod (fake engine), interleaved run
 * by run so all see the same machine load: wall time and the process's own CPU (ru_utime +
 * ru_stime, which load inflates much less than wall time) of `pgoctl ... //ping` and
 * `pgoctl --version`, with the empty compiled Bun program of the same rounds as the runtime's
 * floor; peak RSS from GNU time; then 20 concurrent processes of each build for throughput.
 * For bench/README.md ("Whole-process clients (issue 15)").
 *
 *   bun bench/pgoctl_cpu.ts [ROUNDS=20] [LOAD_REQUESTS=100] PGOCTL_A [PGOCTL_B ...]
 *
 * Each PGOCTL is a pgoctl binary (or `label=path`); pgod is dist/pgod (PGOD_BIN).
 */
import { join, resolve } from "node:path";
import { cleanupAll, composeFile, fakeEngine, loadAverage, peakRssMiB, Pgod, Repo, runUsage, RUN_PREFIX, tempDir } from "./lib.ts";
import { makeKey } from "../test/kit/keys.ts";
import { run } from "../test/kit/process.ts";
import { percentile } from "../test/kit/stats.ts";

const rounds = Number(process.argv[2] ?? 20);
const loadRequests = Number(process.argv[3] ?? 100);
const builds = process.argv.slice(4).map((a) => {
  const eq = a.indexOf("=");
  return eq > 0 ? { label: a.slice(0, eq), path: resolve(a.slice(eq + 1)) } : { label: a, path: resolve(a) };
});
if (builds.length === 0 || !Number.isFinite(rounds)) {
  console.error("Usage: bun bench/pgoctl_cpu.ts [ROUNDS] [LOAD_REQUESTS] PGOCTL_A [PGOCTL_B ...]");
  process.exit(64);
}

interface Sample {
  wall: number;
  cpu: number;
}

/** Runs a process to its end; wall ms and its own CPU ms. */
async function measure(argv: string[]): Promise<Sample & { code: number; stdout: string; stderr: string }> {
  const r = await runUsage(argv, { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: "/root", USER: "bench" });
  return { wall: r.ms, cpu: r.cpuMs, code: r.code, stdout: r.stdout, stderr: r.stderr };
}

const samples = new Map<string, Sample[]>();
const add = (k: string, s: Sample): void => void samples.set(k, [...(samples.get(k) ?? []), s]);

try {
  const engine = await fakeEngine("pgoctlcpu");
  const root = await tempDir("pgoctlcpu");
  const key = await makeKey(root, "k");
  const name = `${RUN_PREFIX}cpu`;
  const repo = await Repo.create(join(root, "repo"), { "compose.yaml": composeFile(0), "ssh/k.pub": key.pub });
  const pg = await Pgod.start({ root, engine, interval: "10m", services: [{ name, repository: repo.bare }] });
  await pg.waitForLog(/msg=deployed /, { timeoutMs: 120_000 });
  const { port } = await pg.ssh();
  const empty = join(root, "empty");
  await Bun.write(`${empty}.ts`, 'console.log("");\n');
  await run(["bun", "build", "--compile", "--bytecode", "--format=esm", "--no-compile-autoload-dotenv", "--no-compile-autoload-bunfig", `${empty}.ts`, "--outfile", empty], { cwd: root });
  const knownHosts = join(root, "known_hosts");
  const ping = (bin: string): string[] => [bin, "-i", key.file, "-p", String(port), "--known-hosts", knownHosts, `127.0.0.1:${name}//ping`];
  const once = async (bin: string): Promise<Sample> => {
    const r = await measure(ping(bin));
    if (r.code !== 0 || !r.stdout.startsWith("pong")) throw new Error(`${bin} ping failed (${r.code}): ${r.stderr.trim()}`);
    return r;
  };
  for (const b of builds) await once(b.path); // the first trusts the host key; all warm the page cache
  const load0 = loadAverage();
  for (let i = 0; i < rounds; i++) {
    add("empty program", await measure([empty]));
    for (const b of builds) {
      add(`${b.label} --version`, await measure([b.path, "--version"]));
      add(`${b.label} ping`, await once(b.path));
    }
  }
  const load1 = loadAverage();
  const row = (k: string, xs: Sample[]): string => {
    const f = (pick: (s: Sample) => number): string => `${percentile(xs.map(pick), 50).toFixed(1)} / ${percentile(xs.map(pick), 99).toFixed(1)}`;
    return `| ${k} | ${f((s) => s.wall)} | ${f((s) => s.cpu)} | ${percentile(rss.get(k) ?? [NaN], 50).toFixed(1)} |`;
  };
  const rss = new Map<string, number[]>();
  const addRss = (k: string, v: number): void => void rss.set(k, [...(rss.get(k) ?? []), v]);
  for (let i = 0; i < 5; i++) {
    addRss("empty program", await peakRssMiB([empty], root));
    for (const b of builds) {
      addRss(`${b.label} --version`, await peakRssMiB([b.path, "--version"], root));
      addRss(`${b.label} ping`, await peakRssMiB(ping(b.path), root));
    }
  }
  console.log(`\nInterleaved, ${rounds} rounds, load average ${load0.toFixed(2)} at the start and ${load1.toFixed(2)} at the end`);
  console.log("| process | wall p50 / p99 ms | CPU p50 / p99 ms | peak RSS p50 MiB |");
  console.log("| --- | --- | --- | --- |");
  for (const [k, xs] of samples) console.log(row(k, xs));

  console.log(`\n20 concurrent processes, ${loadRequests} requests each build`);
  console.log("| build | req/s | CPU per process p50 ms | load average |");
  console.log("| --- | --- | --- | --- |");
  for (const b of builds) {
    let started = 0;
    const cpus: number[] = [];
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: 20 }, async () => {
        while (started < loadRequests) {
          started++;
          cpus.push((await once(b.path)).cpu);
        }
      }),
    );
    const s = (performance.now() - t0) / 1000;
    console.log(`| ${b.label} | ${(loadRequests / s).toFixed(1)} | ${percentile(cpus, 50).toFixed(1)} | ${loadAverage().toFixed(2)} |`);
  }
  await pg.stop();
} finally {
  await cleanupAll();
}
