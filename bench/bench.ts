/**
 * The benchmark of issue 8: idle cost against the original's cycle, cost growth, change to
 * running, ping latency and throughput, memory and start-up. Prints one table; see bench/README.md.
 *
 *   bench/run [--quick] [--engine=real|fake] [--only=1,2,3,4,5] [--json=FILE] [--deadline=SECONDS]
 *
 * Everything it makes (temp dirs, processes, compose projects named pgobench-*) is removed at the
 * end, also on failure, on SIGINT/SIGTERM, and when the deadline passes.
 */
import { createHash, createHmac } from "node:crypto";
import { closeSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { Client } from "ssh2";
import { sshAlgorithms } from "../src/ssh_protocol.ts";
import {
  atCleanup, cleanupAll, COMPOSE, COMPOSE_UP, composeFile, cpuDelta, EXEC, fakeEngine, POLL, loadAverage, machine, ownCpu, Pgod,
  peakRssMiB, realEngine, Repo, ROOT, RUN_PREFIX, runUsage, sweepRealContainers, tempDir, waitFor,
} from "./lib.ts";
import type { Engine, ServiceSpec } from "./lib.ts";
import { makeKey } from "../test/kit/keys.ts";
import { PGOCTL, PGOD } from "../test/kit/pgod.ts";
import { canConnect, cpuTimes, freePort, memory, pidsNamed, run, spawnTracked } from "../test/kit/process.ts";
import { median, percentile } from "../test/kit/stats.ts";
import { randomId } from "../test/kit/temp.ts";
import { serveGitHttp } from "../test/git_http.ts";

// ---------------------------------------------------------------------------------------------
// Options

interface Options {
  quick: boolean;
  engine: "real" | "fake";
  only: Set<number>;
  json: string | null;
  deadlineS: number;
  /**
   * How the services' remotes are reached: smart HTTP (git http-backend; the default), local
   * paths, or ssh (a loopback sshd; section 1 only, the others use HTTP then).
   */
  remotes: "http" | "path" | "ssh";
}

function parseOptions(argv: string[]): Options {
  const o: Options = { quick: false, engine: "real", only: new Set([1, 2, 3, 4, 5]), json: null, deadlineS: 0, remotes: "http" };
  let engineSet = false;
  for (const a of argv) {
    if (a === "--quick") o.quick = true;
    else if (a === "--engine=real" || a === "--engine=fake") {
      o.engine = a.endsWith("real") ? "real" : "fake";
      engineSet = true;
    } else if (a.startsWith("--only=")) {
      o.only = new Set(a.slice(7).split(",").map(Number).filter((n) => n >= 1 && n <= 5));
    } else if (a.startsWith("--json=")) o.json = a.slice(7);
    else if (a.startsWith("--deadline=")) o.deadlineS = Number(a.slice(11));
    else if (a === "--remotes=http" || a === "--remotes=path" || a === "--remotes=ssh") o.remotes = a.slice(10) as Options["remotes"];
    else if (a === "-h" || a === "--help") {
      process.stdout.write(readFileSync(import.meta.path, "utf8").split("\n").slice(1, 9).map((l) => l.replace(/^ \*\/? ?/, "")).join("\n") + "\n");
      process.exit(0);
    } else {
      process.stderr.write(`bench: Unknown option "${a}"\n`);
      process.exit(64);
    }
  }
  if (o.quick && !engineSet) o.engine = "fake";
  if (!(o.deadlineS > 0)) o.deadlineS = o.quick ? 120 : 20 * 60;
  return o;
}

/** Sizes and counts: the full run stays under about 10 minutes on 2 cores; --quick is a smoke test. */
function plan(quick: boolean) {
  return quick
    ? {
      s1: { services: 2, interval: "1s", settleCycles: 0, windows: 1, windowMs: 1500, baselineRuns: 1 },
      s2: { sizes: [2], settleCycles: 0, windows: 1, windowMs: 1500 },
      s3: { reps: 1 },
      s4: { pgoctl: 1, ssh: 1, inproc: 5, load: 20, loadMs: 5000, procLoad: 2 },
      s5: { starts: 1, rssSize: 2 },
    }
    : {
      s1: { services: 50, interval: "2s", settleCycles: 2, windows: 3, windowMs: 12_000, baselineRuns: 3 },
      s2: { sizes: [10, 50, 100, 200], settleCycles: 2, windows: 3, windowMs: 6000 },
      s3: { reps: 5 },
      s4: { pgoctl: 30, ssh: 30, inproc: 200, load: 1500, loadMs: 20_000, procLoad: 60 },
      s5: { starts: 7, rssSize: 100 },
    };
}

// ---------------------------------------------------------------------------------------------
// Results

interface Row {
  id: string;
  figure: string;
  ours: string;
  baseline?: string;
  target?: string;
  verdict?: "met" | "MISSED" | "";
}

const rows: Row[] = [];
const notes: string[] = [];
const raw: Record<string, unknown> = {};

function row(r: Row): void {
  rows.push(r);
  process.stderr.write(`bench: ${r.id} ${r.figure}: ${r.ours}${r.baseline ? ` (baseline ${r.baseline})` : ""}${r.verdict ? ` [${r.verdict}]` : ""}\n`);
}

const t0 = performance.now();
const say = (s: string): void => void process.stderr.write(`bench: [${((performance.now() - t0) / 1000).toFixed(1)}s] ${s}\n`);
const ms = (v: number, digits = 0): string => (Number.isFinite(v) ? `${v.toFixed(digits)} ms` : "n/a");
const sec = (v: number, digits = 3): string => (Number.isFinite(v) ? `${v.toFixed(digits)} s` : "n/a");
const verdict = (ok: boolean): "met" | "MISSED" => (ok ? "met" : "MISSED");

// ---------------------------------------------------------------------------------------------
// Shared set-up

/** Makes `n` identical bare repositories from one template holding `files`. */
async function makeRepos(root: string, n: number, files: Record<string, string>): Promise<{ template: Repo; bares: string[] }> {
  const template = await Repo.create(join(root, "template"), files);
  const bares = Array.from({ length: n }, (_, i) => join(root, `remote-${i}.git`));
  // One shell for all copies: n cp processes, not 2n.
  await run(["bash", "-c", 'src=$1; shift; for d; do cp -a "$src" "$d" || exit 1; done', "_", template.bare, ...bares]);
  return { template, bares };
}

/**
 * The URLs pgod follows for `bares`: served over smart HTTP by `git http-backend` behind a server
 * in this process (as a remote on another machine, the server's work is not pgod's), or the paths.
 */
function remoteUrls(root: string, bares: string[], kind: "http" | "path"): string[] {
  if (kind === "path") return bares;
  const server = serveGitHttp(root);
  atCleanup("the git HTTP server", () => server.stop());
  return bares.map((b) => `${server.base}/${basename(b)}`);
}

/** Waits until every service deployed once and then polled `cycles` more times (steady state). */
async function waitIdle(pg: Pgod, n: number, cycles: number, timeoutMs: number): Promise<void> {
  await pg.waitForLog(/msg=deployed /, { count: n, timeoutMs });
  const since = pg.mark();
  await pg.waitForLog(POLL, { count: cycles * n, since, timeoutMs: 120_000 });
}

interface Window {
  t0: number;
  t1: number;
  cpu: number;
  self: number;
  children: number;
  cycles: number;
  execs: number;
  composes: number;
  composeUps: number;
  engineCpu: number;
  rssMiB: number;
  seconds: number;
}

/** Measures pgod over `windowMs`: CPU (own + children), cycles (ls-remote lines / n), execs, compose runs. */
async function measureWindow(pg: Pgod, n: number, windowMs: number, enginePids: number[]): Promise<Window> {
  const m0 = pg.mark();
  const c0 = cpuTimes(pg.pid);
  const e0 = ownCpu(enginePids);
  const t0 = performance.now();
  await Bun.sleep(windowMs);
  // A window holds at least one whole cycle, however loaded the machine (at most 20 s more).
  for (const until = performance.now() + 20_000; pg.lines(POLL, m0).length < n && performance.now() < until;) await Bun.sleep(100);
  const c1 = cpuTimes(pg.pid);
  const e1 = ownCpu(enginePids);
  const t1 = performance.now();
  const m1 = pg.mark();
  const d = cpuDelta(c0, c1);
  const ls = pg.lines(POLL, m0, m1).length;
  return {
    t0,
    t1,
    cpu: d.total,
    self: d.self,
    children: d.children,
    cycles: ls / n,
    execs: pg.lines(EXEC, m0, m1).length,
    composes: pg.lines(COMPOSE, m0, m1).length,
    composeUps: pg.lines(COMPOSE_UP, m0, m1).length,
    engineCpu: e1 - e0,
    rssMiB: memory(pg.pid).rssMiB,
    seconds: (t1 - t0) / 1000,
  };
}

/** Whether `perf stat` can count the sched_process_exec tracepoint here (it needs root and tracefs). */
async function havePerf(): Promise<boolean> {
  if (Bun.which("perf") === null) return false;
  const r = await run(["perf", "stat", "-x", ",", "-e", "sched:sched_process_exec", "--", "/bin/true"], { check: false, timeoutMs: 30_000 });
  return r.code === 0 && /^1,.*sched:sched_process_exec/m.test(r.stderr);
}

/** The count in `perf stat -x ,` output for the exec tracepoint. */
function perfCount(text: string): number {
  const m = /^(\d+),[^,]*,sched:sched_process_exec/m.exec(text);
  return m ? Number(m[1]) : NaN;
}

/** Pids of the engine's daemons (their CPU for our requests is not in pgod's accounting). */
function enginePids(engine: Engine): number[] {
  return engine.kind === "real" ? [...pidsNamed("dockerd"), ...pidsNamed("containerd")] : [];
}

// ---------------------------------------------------------------------------------------------
// 1. Idle cycle against the baseline

/** The ssh remotes of section 1 (`--remotes=ssh`), and the service user that reaches them. */
interface SshRemotes {
  urls: string[];
  user: string;
  home: string;
  /** How many logins sshd accepted so far. */
  logins(): number;
}

/**
 * Serves `bares` over ssh: OpenSSH's sshd on loopback (its work is the server's, as a forge's
 * would be), logged in to as a service user of this run (`useradd`, in the docker group; removed
 * at cleanup) with its own key in its own ~/.ssh and the server's host key in its known_hosts,
 * which is what pgod (in-process) and the baseline (git over OpenSSH) both use. The repositories
 * become that user's, so that git serves them to it.
 */
async function sshRemotes(root: string, bares: string[]): Promise<SshRemotes> {
  const user = `pgobench-${randomId(8)}`;
  const home = join(root, "home");
  // No password, but not locked ("*"): sshd refuses locked accounts without PAM.
  await run(["useradd", "--system", "--password", "*", "--create-home", "--home-dir", home, "--shell", "/bin/sh", "--groups", "docker", user]);
  atCleanup(`user ${user}`, async () => void (await run(["userdel", user], { check: false })));
  const srv = join(root, "sshd");
  await run(["mkdir", "-p", srv, join(home, ".ssh"), "/run/sshd"]);
  await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", join(srv, "host")]);
  await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", user, "-f", join(home, ".ssh", "id_ed25519")]);
  await writeFile(join(srv, "authorized_keys"), await readFile(join(home, ".ssh", "id_ed25519.pub"), "utf8"));
  const port = await freePort();
  const hostPub = (await readFile(join(srv, "host.pub"), "utf8")).trim().split(" ").slice(0, 2).join(" ");
  await writeFile(join(home, ".ssh", "known_hosts"), `[127.0.0.1]:${port} ${hostPub}\n`);
  await run(["chown", "-R", `${user}:`, join(home, ".ssh"), ...bares]);
  await run(["chmod", "-R", "go=", join(home, ".ssh")]);
  await writeFile(join(srv, "sshd.conf"), [
    `Port ${port}`, "ListenAddress 127.0.0.1", `HostKey ${join(srv, "host")}`, `PidFile ${join(srv, "pid")}`,
    `AuthorizedKeysFile ${join(srv, "authorized_keys")}`, "PasswordAuthentication no", "KbdInteractiveAuthentication no",
    "UsePAM no", "StrictModes no", "AcceptEnv GIT_PROTOCOL", "MaxStartups 100:30:200", "LogLevel INFO", "",
  ].join("\n"));
  const log = join(srv, "sshd.log");
  const fd = openSync(log, "a");
  try {
    spawnTracked(["/usr/sbin/sshd", "-D", "-e", "-f", join(srv, "sshd.conf")], { stderr: fd });
  } finally {
    closeSync(fd);
  }
  await waitFor("sshd to listen", async () => ((await canConnect(port)) ? true : undefined), 30_000, 20);
  const logins = (): number => readFileSync(log, "utf8").split("\n").filter((l) => l.includes("Accepted publickey")).length;
  return { urls: bares.map((b) => `ssh://${user}@127.0.0.1:${port}${b}`), user, home, logins };
}

async function idleCycle(engine: Engine, p: ReturnType<typeof plan>["s1"], remotes: Options["remotes"]): Promise<void> {
  const n = p.services;
  say(`1: idle cycle, ${engine.kind} engine, ${n} services, remotes over ${remotes}`);
  const root = await tempDir("s1");
  const { bares } = await makeRepos(root, n, { "compose.yaml": composeFile(0) });
  const ssh = remotes === "ssh" ? await sshRemotes(root, bares) : null;
  const urls = ssh ? ssh.urls : remoteUrls(root, bares, remotes as "http" | "path");
  const services: ServiceSpec[] = urls.map((u, i) => ({ name: `${RUN_PREFIX}s1-${i}`, repository: u, ...(ssh ? { user: ssh.user } : {}) }));
  const perf = await havePerf();
  const pg = await Pgod.start({ root, services, engine, interval: p.interval, countExecs: perf });
  await waitIdle(pg, n, p.settleCycles, engine.kind === "real" ? 900_000 : 120_000);
  say(`1: ${n} services deployed and idle; measuring ${p.windows} window(s) of ${p.windowMs / 1000} s`);
  const eng = enginePids(engine);
  const ws: Window[] = [];
  const logins0 = ssh?.logins() ?? 0;
  for (let i = 0; i < p.windows; i++) ws.push(await measureWindow(pg, n, p.windowMs, eng));
  const logins = (ssh?.logins() ?? 0) - logins0;
  raw["s1.windows"] = ws;
  const perCycle = (f: (w: Window) => number): number => median(ws.map((w) => f(w) / w.cycles));
  await pg.stop();
  // Every program pgod's tree started (grandchildren too), from perf's intervals, now flushed.
  const treeExecs = perCycle((w) => pg.execsBetween(w.t0, w.t1));

  // The baseline on the same checkouts and the same (running) compose projects.
  const dirs = services.map((s) => join(root, "dir", s.name));
  // With ssh remotes the baseline runs as the services' user: its key, its known_hosts.
  const env = { PATH: engine.path, HOME: ssh?.home ?? "/root", LANG: "C.UTF-8" };
  const who = ssh?.user ?? "root";
  const asUser = ssh ? ["runuser", "-u", ssh.user, "--"] : [];
  const out = ssh?.home ?? root; // where the timings are written (by that user)

  // The floor of our design: the `git ls-remote` of each service, run by a shell loop instead of
  // pgod, with the environment pgod gives git.
  const floorRuns = Math.max(n, 3 * Math.min(n, 20));
  const tfFloor = join(out, "time-floor");
  await run([
    ...asUser, "/usr/bin/time", "-f", "%U %S", "-o", tfFloor, "bash", "-c",
    'n=$1; shift; i=0; while [ $i -lt $n ]; do for d; do [ $i -lt $n ] || break; GIT_DIR="${d%/*}/.gitdirs/${d##*/}" git ls-remote --heads origin refs/heads/main >/dev/null || exit 1; i=$((i+1)); done; done',
    "_", String(floorRuns), ...dirs,
  ], { env: { ...env, LC_ALL: "C.UTF-8", USER: who, LOGNAME: who, GIT_CONFIG_NOSYSTEM: "1", GIT_TERMINAL_PROMPT: "0" }, timeoutMs: 600_000 });
  const [fu, fs] = (await readFile(tfFloor, "utf8")).trim().split("\n").at(-1)!.split(" ").map(Number);
  const floor = (fu! + fs!) / floorRuns;
  const script = join(ROOT, "bench/baseline.sh");
  // No warm-up: pgod's own deploys just ran docker compose on these very projects.
  const base: Array<{ cpu: number; wall: number; engineCpu: number; execs: number }> = [];
  const baseLogins0 = ssh?.logins() ?? 0;
  for (let i = 0; i < p.baselineRuns; i++) {
    const tf = join(out, `time-${i}`);
    const pf = join(root, `perf-${i}`);
    // perf (outside the measurement) counts programs started; time measures the script's CPU.
    const argv = [...asUser, "/usr/bin/time", "-f", "%e %U %S", "-o", tf, "bash", script, ...dirs];
    const e0 = ownCpu(eng);
    const r = await run(perf ? ["perf", "stat", "-x", ",", "-e", "sched:sched_process_exec", "-o", pf, "--", ...argv] : argv, { env: { ...env, USER: who, LOGNAME: who }, timeoutMs: 900_000 });
    const e1 = ownCpu(eng);
    const [wall, u, s] = (await readFile(tf, "utf8")).trim().split("\n").at(-1)!.split(" ").map(Number);
    // Not counted: runuser, /usr/bin/time and the bash running the script (the cron job itself).
    const execs = perf ? perfCount(await readFile(pf, "utf8")) - 2 - (ssh ? 1 : 0) : NaN;
    base.push({ cpu: u! + s!, wall: wall!, engineCpu: e1 - e0, execs });
    say(`1: baseline cycle ${i + 1}: ${(u! + s!).toFixed(2)} s CPU, ${wall} s wall, ${execs} programs (exit ${r.code})`);
  }
  const baseExecs = median(base.map((b) => b.execs));
  const baseLogins = ((ssh?.logins() ?? 0) - baseLogins0) / p.baselineRuns;
  raw["s1.baseline"] = base;
  const ours = perCycle((w) => w.cpu);
  const theirs = median(base.map((b) => b.cpu));
  const ups = ws.reduce((a, w) => a + w.composeUps, 0);
  row({ id: "1", figure: `idle cycle CPU, ${n} services, ${engine.kind} engine, remotes over ${remotes} (pgod + children)`, ours: sec(ours), baseline: sec(theirs), target: "<= 5% of baseline", verdict: verdict(ours <= 0.05 * theirs) });
  row({ id: "1", figure: "  ratio ours / baseline", ours: `${((100 * ours) / theirs).toFixed(2)} %`, target: "<= 5 %", verdict: verdict(ours <= 0.05 * theirs) });
  row({ id: "1", figure: "  of which pgod itself / its children", ours: `${sec(perCycle((w) => w.self))} / ${sec(perCycle((w) => w.children))}` });
  row({ id: "1", figure: `  polling with git instead: ${n} \`git ls-remote\` run by a shell loop (${ms(floor * 1000, 1)} each); its ratio to baseline`, ours: `${sec(floor * n)}, ${((100 * floor * n) / theirs).toFixed(2)} %` });
  row({ id: "1", figure: "  `docker compose up` runs while idle", ours: String(ups), baseline: `${n} per cycle`, target: "0", verdict: verdict(ups === 0) });
  row({ id: "1", figure: "  processes pgod started per cycle (its --debug exec lines)", ours: perCycle((w) => w.execs).toFixed(1) });
  row({ id: "1", figure: "  programs started per cycle, grandchildren too (perf: sched_process_exec)", ours: Number.isFinite(treeExecs) ? treeExecs.toFixed(1) : "n/a", baseline: Number.isFinite(baseExecs) ? baseExecs.toFixed(0) : "n/a" });
  if (ssh) {
    const cycles = ws.reduce((a, w) => a + w.cycles, 0);
    row({ id: "1", figure: "  ssh logins per cycle (sshd's log): pgod keeps its connections", ours: (logins / cycles).toFixed(1), baseline: baseLogins.toFixed(0) });
  }
  if (engine.kind === "real") {
    row({ id: "1", figure: "  engine CPU per cycle (dockerd + containerd; informational)", ours: sec(perCycle((w) => w.engineCpu)), baseline: sec(median(base.map((b) => b.engineCpu))) });
  }
  row({ id: "1", figure: "  wall time of one baseline cycle", ours: `cycle every ${p.interval}-${parseInt(p.interval) * 1.5}s`, baseline: sec(median(base.map((b) => b.wall)), 1) });
}

// ---------------------------------------------------------------------------------------------
// 2. Cost growth (and 5a. memory)

async function growth(p: ReturnType<typeof plan>["s2"], rssSize: number, remotes: "http" | "path"): Promise<void> {
  const results: Array<{ n: number; cpu: number; self: number; rss: number; hwm: number; execs: number; ups: number }> = [];
  for (const n of p.sizes) {
    say(`2: idle cycle with the fake docker shim, ${n} services`);
    const engine = await fakeEngine(`s2-${n}`);
    const root = await tempDir(`s2-${n}`);
    const { bares } = await makeRepos(root, n, { "compose.yaml": composeFile(0) });
    const services = remoteUrls(root, bares, remotes).map((u, i) => ({ name: `${RUN_PREFIX}s2-${n}-${i}`, repository: u }));
    // The poll interval grows with n (2 s up to 50 services, 5 s at 200) so that a cycle's git
    // processes fit in these 2 cores; a window covers at least two cycles. CPU per cycle does
    // not depend on the interval.
    const interval = p.windowMs < 5000 ? 1 : Math.max(2, Math.ceil(n / 40));
    const windowMs = Math.max(p.windowMs, 2.5 * interval * 1000);
    const pg = await Pgod.start({ root, services, engine, interval: `${interval}s` });
    await pg.waitForLog(/msg=deployed /, { count: n, timeoutMs: 300_000 });
    say(`2: ${n} services deployed`);
    await waitIdle(pg, n, p.settleCycles, 300_000);
    say(`2: ${n} services idle`);
    const ws: Window[] = [];
    for (let i = 0; i < p.windows; i++) ws.push(await measureWindow(pg, n, windowMs, []));
    const mem = memory(pg.pid);
    await pg.stop();
    say(`2: ${n} services measured and stopped`);
    engine.stop();
    const r = {
      n,
      cpu: median(ws.map((w) => w.cpu / w.cycles)),
      self: median(ws.map((w) => w.self / w.cycles)),
      rss: median(ws.map((w) => w.rssMiB)),
      hwm: mem.hwmMiB,
      execs: median(ws.map((w) => w.execs / w.cycles)),
      ups: ws.reduce((a, w) => a + w.composeUps, 0),
    };
    results.push(r);
    row({
      id: "2",
      figure: `idle cycle, fake shim, ${n} services, remotes over ${remotes}: CPU / per service (pgod's own part) / RSS`,
      ours: `${sec(r.cpu)} / ${ms((r.cpu / n) * 1000, 1)} (${ms((r.self / n) * 1000, 1)}) / ${r.rss.toFixed(1)} MiB`,
      baseline: `${r.execs.toFixed(1)} execs/cycle, ${r.ups} compose up`,
    });
    if (n === rssSize) {
      row({ id: "5", figure: `pgod RSS, ${n} services idle (VmRSS; peak VmHWM ${r.hwm.toFixed(1)} MiB)`, ours: `${r.rss.toFixed(1)} MiB`, target: "<= 80 MB", verdict: verdict(r.rss * 1.048576 <= 80) });
    }
  }
  raw["s2"] = results;
  if (results.length >= 2) {
    // Least-squares fit of CPU per cycle against n: the slope is the cost per service.
    const xs = results.map((r) => r.n);
    const ys = results.map((r) => r.cpu);
    const mx = xs.reduce((a, b) => a + b) / xs.length;
    const my = ys.reduce((a, b) => a + b) / ys.length;
    const sxy = xs.reduce((a, x, i) => a + (x - mx) * (ys[i]! - my), 0);
    const sxx = xs.reduce((a, x) => a + (x - mx) ** 2, 0);
    const slope = sxy / sxx;
    const icpt = my - slope * mx;
    const ssr = ys.reduce((a, y, i) => a + (y - (icpt + slope * xs[i]!)) ** 2, 0);
    const sst = ys.reduce((a, y) => a + (y - my) ** 2, 0);
    const r2 = sst > 0 ? 1 - ssr / sst : 1;
    const rs = results.map((r) => r.rss);
    const rslope = (rs.at(-1)! - rs[0]!) / (xs.at(-1)! - xs[0]!);
    row({ id: "2", figure: "  linear fit of CPU per cycle: per service, fixed, R²", ours: `${ms(slope * 1000, 2)} + ${ms(icpt * 1000, 1)}, R² ${r2.toFixed(3)}` });
    row({ id: "2", figure: "  RSS growth per service", ours: `${(rslope * 1024).toFixed(0)} KiB` });
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Change to running

async function changeToRunning(engine: Engine, p: ReturnType<typeof plan>["s3"]): Promise<void> {
  say(`3: change to running, ${engine.kind} engine, ${p.reps} rep(s) each`);
  const root = await tempDir("s3");
  const key = await makeKey(root, "bench");
  const repo = await Repo.create(join(root, "repo"), { "compose.yaml": composeFile(0), "ssh/bench.pub": key.pub });
  const name = `${RUN_PREFIX}deploy`;
  const secret = randomId(32);
  const pg = await Pgod.start({
    root, engine, interval: "10m", args: ["--webhook", "127.0.0.1:0"],
    services: [{ name, repository: repo.bare, extra: `webhook_secret = "${secret}"\n` }],
  });
  await pg.waitForLog(/msg=deployed /, { timeoutMs: 300_000 });
  const { port } = await pg.ssh();
  const hook = await pg.webhook();
  const knownHosts = join(root, "known_hosts");
  const ctl = (cmd: string) => run([PGOCTL, "-i", key.file, "-p", String(port), "--known-hosts", knownHosts, `127.0.0.1:${name}//${cmd}`], { check: false, timeoutMs: 300_000 });
  await ctl("ping"); // trusts the host key on first use

  // The reference: the same change applied by `docker compose up -d` alone, to its own project.
  const ref = `${RUN_PREFIX}ref`;
  const refDir = join(root, "ref");
  const env = { PATH: engine.path, HOME: "/root", LANG: "C.UTF-8" };
  await Bun.write(join(refDir, "compose.yaml"), composeFile(0));
  await run(["docker", "compose", "-p", ref, "up", "--detach", "--quiet-pull"], { cwd: refDir, env, timeoutMs: 300_000 });

  /** Resolves when `project` runs a container that is not one of `old`; returns performance.now() then. */
  const newRunning = async (project: string, old: string[], timeoutMs = 300_000): Promise<number> =>
    waitFor(`a new running container of "${project}"`, async () => {
      const ids = await engine.running(project);
      return ids.some((id) => !old.includes(id)) ? performance.now() : undefined;
    }, timeoutMs, 10);

  let rev = 0;
  const alone: number[] = [];
  const viaCtl: number[] = [];
  const viaHook: number[] = [];
  const pushes: number[] = [];
  const ctlReturn: number[] = [];
  const execs: number[] = [];
  let breakdown: string[] = [];
  for (let i = 0; i < p.reps; i++) {
    // a) docker compose up -d alone.
    await writeFile(join(refDir, "compose.yaml"), composeFile(++rev));
    let old = await engine.running(ref);
    let t0 = performance.now();
    const up = spawnTracked(["docker", "compose", "-p", ref, "up", "--detach", "--quiet-pull"], { cwd: refDir, env });
    alone.push((await newRunning(ref, old)) - t0);
    if ((await up.exited) !== 0) throw new Error("docker compose up of the reference project failed");

    // b) git push, then pgoctl sync.
    await repo.write({ "compose.yaml": composeFile(++rev) });
    await repo.commit(`rev ${rev}`);
    old = await engine.running(name);
    pushes.push(await repo.push());
    let mark = pg.mark();
    t0 = performance.now();
    const wall0 = Date.now();
    const sync = spawnTracked([PGOCTL, "-i", key.file, "-p", String(port), "--known-hosts", knownHosts, `127.0.0.1:${name}//sync`]);
    viaCtl.push((await newRunning(name, old)) - t0);
    const code = await sync.exited;
    ctlReturn.push(performance.now() - t0);
    if (code !== 0) throw new Error(`pgoctl sync exited ${code}`);
    await pg.waitForLog(/msg=deployed /, { since: mark, timeoutMs: 300_000 });
    breakdown = timeline(pg.log().slice(mark), wall0, viaCtl.at(-1)!);
    const deployLog = pg.log().slice(mark);
    execs.push(deployLog.slice(0, deployLog.search(/msg=deployed /)).split("\n").filter((l) => EXEC.test(l) && !/argv="(getent|id) /.test(l)).length);

    // c) git push, then a signed webhook.
    await repo.write({ "compose.yaml": composeFile(++rev) });
    await repo.commit(`rev ${rev}`);
    old = await engine.running(name);
    pushes.push(await repo.push());
    mark = pg.mark();
    const body = JSON.stringify({ ref: "refs/heads/main", bench: rev });
    t0 = performance.now();
    const res = await fetch(`http://${hook}/hooks/${name}`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "x-github-event": "push",
        "x-github-delivery": `bench-${randomId(12)}`,
        "x-hub-signature-256": `sha256=${createHmac("sha256", secret).update(body).digest("hex")}`,
      },
      body,
    });
    if (res.status !== 202) throw new Error(`webhook answered ${res.status}: ${await res.text()}`);
    viaHook.push((await newRunning(name, old)) - t0);
    await pg.waitForLog(/msg=deployed /, { since: mark, timeoutMs: 300_000 });
  }
  await pg.stop();
  raw["s3"] = { alone, viaCtl, viaHook, pushes, ctlReturn, execs, breakdown };
  const a = median(alone);
  const c = median(viaCtl);
  const h = median(viaHook);
  row({ id: "3", figure: "`docker compose up -d` alone, change to new container running", ours: ms(a), target: "(reference)" });
  row({ id: "3", figure: "push to running via `pgoctl sync`: total / our overhead", ours: `${ms(c)} / ${ms(c - a)}`, target: "overhead <= 300 ms", verdict: verdict(c - a <= 300) });
  row({ id: "3", figure: "push to running via signed webhook: total / our overhead", ours: `${ms(h)} / ${ms(h - a)}`, target: "overhead <= 300 ms", verdict: verdict(h - a <= 300) });
  row({ id: "3", figure: "  git push itself (not counted) / `pgoctl sync` returns after", ours: `${ms(median(pushes))} / ${ms(median(ctlReturn))}` });
  row({ id: "3", figure: "  processes pgod starts for such a deploy (git and compose)", ours: median(execs).toFixed(0) });
  notes.push(`Timeline of the last \`pgoctl sync\` deploy (ms after pgoctl started; from pgod's --debug log):\n${breakdown.join("\n")}`);
}

/** pgod's exec lines (and a few others) after `wall0`, as "+ms what". */
function timeline(log: string, wall0: number, runningAt: number): string[] {
  const out: string[] = [];
  for (const l of log.split("\n")) {
    const m = /^(\S+Z) \w+ msg=(exec argv="([^"]*)"|"?(new commit|deployed|SSH request|request routed|webhook: sync triggered)"?)/.exec(l);
    if (!m) continue;
    const at = Date.parse(m[1]!) - wall0;
    const what = m[3] !== undefined ? m[3].replace(/ --project-name \S+ --file \S+/, "").slice(0, 80) : m[4]!;
    out.push(`  +${String(at).padStart(5)} ms  ${what}`);
  }
  out.push(`  +${String(Math.round(runningAt)).padStart(5)} ms  (new container seen running)`);
  return out;
}

// ---------------------------------------------------------------------------------------------
// 4. ping

/** One request on a new SSH connection made in this process; resolves with its duration (ms). */
function sshPing(o: { port: number; key: Buffer; hostKey: string; request: string }): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const c = new Client();
    let out = "";
    let status: number | null = null;
    const timer = setTimeout(() => {
      c.end();
      reject(new Error("ping timed out after 15 s"));
    }, 15_000);
    const fail = (e: Error): void => {
      clearTimeout(timer);
      c.end();
      reject(e);
    };
    c.on("error", fail);
    c.on("ready", () => {
      c.exec(o.request, (err, ch) => {
        if (err) return fail(err);
        ch.on("data", (d: Buffer) => (out += d.toString()));
        ch.stderr.on("data", () => {});
        ch.on("exit", (code: number) => (status = code));
        ch.on("close", () => {
          clearTimeout(timer);
          c.end();
          if (status === 0 && out.startsWith("pong")) resolve(performance.now() - t0);
          else reject(new Error(`ping failed: status ${status}, output ${JSON.stringify(out)}`));
        });
      });
    });
    c.connect({
      host: "127.0.0.1",
      port: o.port,
      username: "bench",
      privateKey: o.key,
      algorithms: sshAlgorithms(),
      readyTimeout: 15_000,
      hostVerifier: (blob: Buffer) => `SHA256:${createHash("sha256").update(blob).digest("base64").replace(/=+$/, "")}` === o.hostKey,
    });
  });
}

/** Runs `total` requests with `concurrency` workers (bounded by `maxMs`); returns done, errors, seconds. */
async function load(concurrency: number, total: number, maxMs: number, one: () => Promise<unknown>): Promise<{ done: number; errors: number; seconds: number; firstError: string }> {
  let started = 0;
  let done = 0;
  let errors = 0;
  let firstError = "";
  const t0 = performance.now();
  const worker = async (): Promise<void> => {
    while (started < total && performance.now() - t0 < maxMs) {
      started++;
      try {
        await one();
        done++;
      } catch (e) {
        errors++;
        firstError ||= e instanceof Error ? e.message : String(e);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { done, errors, seconds: (performance.now() - t0) / 1000, firstError };
}

async function ping(engine: Engine, p: ReturnType<typeof plan>["s4"]): Promise<void> {
  say(`4: ping round trips on loopback, ${engine.kind} engine`);
  const root = await tempDir("s4");
  const key = await makeKey(root, "bench");
  const repo = await Repo.create(join(root, "repo"), { "compose.yaml": composeFile(0), "ssh/bench.pub": key.pub });
  const name = `${RUN_PREFIX}ping`;
  const pg = await Pgod.start({ root, engine, interval: "10m", services: [{ name, repository: repo.bare }] });
  // ping needs only the checkout; ps and logs need the deployed container.
  await pg.waitForLog(/msg=deployed /, { timeoutMs: 300_000 });
  const { port, hostKey } = await pg.ssh();
  const knownHosts = join(root, "known_hosts");
  const request = `${name}//ping`;
  // The runtime's floor: a compiled Bun program that only prints, built as scripts/build.sh builds pgoctl.
  const empty = join(root, "empty");
  await Bun.write(`${empty}.ts`, 'console.log("");\n');
  await run(["bun", "build", "--compile", "--bytecode", "--format=esm", "--no-compile-autoload-dotenv", "--no-compile-autoload-bunfig", `${empty}.ts`, "--outfile", empty], { cwd: root });
  // CPU of each whole process (ru_utime + ru_stime): load inflates it much less than wall time.
  const cpu = { empty: [] as number[], version: [] as number[], ping: [] as number[] };
  const pgoctlCmd = async (cmd: string, ...args: string[]): Promise<number> => {
    const r = await runUsage([PGOCTL, "-i", key.file, "-p", String(port), "--known-hosts", knownHosts, `127.0.0.1:${name}//${cmd}`, ...args]);
    if (r.code !== 0 || (cmd === "ping" && !r.stdout.startsWith("pong"))) throw new Error(`pgoctl ${cmd} failed (${r.code}): ${r.stderr.trim()}`);
    if (cmd === "ping") cpu.ping.push(r.cpuMs);
    return r.ms;
  };
  const pgoctl = (): Promise<number> => pgoctlCmd("ping");
  const sshCmd = async (cmd: string): Promise<number> => {
    const r = await run([
      "ssh", "-F", "/dev/null", "-p", String(port), "-i", key.file, "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
      "-o", `UserKnownHostsFile=${knownHosts}`, "-o", "StrictHostKeyChecking=yes", "-o", "HostKeyAlgorithms=ssh-ed25519",
      "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "127.0.0.1", `${name}//${cmd}`,
    ], { check: false, timeoutMs: 30_000 });
    if (r.code !== 0 || (cmd === "ping" && !r.stdout.startsWith("pong"))) throw new Error(`ssh ${cmd} failed (${r.code}): ${r.stderr.trim()}`);
    return r.ms;
  };
  const openssh = (): Promise<number> => sshCmd("ping");
  const privateKey = await readFile(key.file);
  const inproc = (): Promise<number> => sshPing({ port, key: privateKey, hostKey, request });

  await pgoctl(); // trusts the host key on first use (OpenSSH then checks against the same file)
  const series = async (what: string, n: number, warm: number, f: () => Promise<number>): Promise<number[]> => {
    for (let i = 0; i < warm; i++) await f();
    const xs: number[] = [];
    for (let i = 0; i < n; i++) xs.push(await f());
    say(`4: ${what}: p50 ${percentile(xs, 50).toFixed(1)} ms, p99 ${percentile(xs, 99).toFixed(1)} ms`);
    return xs;
  };
  const warm = p.pgoctl >= 10 ? 2 : 0;
  // The empty program and --version interleaved with the pings, so that all see the same load.
  const emptyMs: number[] = [];
  const version: number[] = [];
  const floor = async (): Promise<void> => {
    const e = await runUsage([empty]);
    const v = await runUsage([PGOCTL, "--version"]);
    emptyMs.push(e.ms);
    version.push(v.ms);
    cpu.empty.push(e.cpuMs);
    cpu.version.push(v.cpuMs);
  };
  const a = await series("pgoctl", p.pgoctl, warm, async () => {
    await floor();
    return await pgoctl();
  });
  const pingCpu = cpu.ping.slice(-a.length); // the measured series, not the warm-up or the first (host key) run
  const b = await series("OpenSSH ssh", p.ssh, warm, openssh);
  const c = await series("in-process ssh2", p.inproc, Math.max(1, warm), inproc);
  raw["s4.latency"] = { pgoctl: a, ssh: b, inproc: c, empty: emptyMs, version, cpu: { ...cpu, ping: pingCpu }, loadAverage: loadAverage() };
  const lat = (figure: string, xs: number[], target: string, ok: (p50: number, p99: number) => boolean): void => {
    const p50 = percentile(xs, 50);
    const p99 = percentile(xs, 99);
    row({
      id: "4", figure: `${figure}, 1 client, p50 / p99 (n=${xs.length})`, ours: `${ms(p50, 1)} / ${ms(p99, 1)}`,
      target, verdict: target === "(informational)" ? "" : verdict(ok(p50, p99)),
    });
  };
  const e50 = median(emptyMs);
  row({ id: "4", figure: "  reference: a compiled Bun program that only prints (the runtime's floor), median", ours: ms(e50, 1) });
  lat("ping via whole-process `dist/pgoctl`", a, "p50 <= 30 ms, p99 <= 40 ms", (p50, p99) => p50 <= 30 && p99 <= 40);
  row({ id: "4", figure: "  the same as a ratio to the empty program's median: p50 / p99", ours: `${(percentile(a, 50) / e50).toFixed(2)} / ${(percentile(a, 99) / e50).toFixed(2)}` });
  const v50 = median(version);
  row({ id: "4", figure: "  `dist/pgoctl --version` (process start and what it loads, no network), median; minus the empty program", ours: `${ms(v50, 1)}; ${ms(v50 - e50, 1)}`, target: "<= 10 ms more", verdict: verdict(v50 - e50 <= 10) });
  row({
    id: "4", figure: "  CPU per process (ru_utime + ru_stime), median: the empty program / `pgoctl --version` / `pgoctl ping`",
    ours: `${ms(median(cpu.empty), 1)} / ${ms(median(cpu.version), 1)} / ${ms(median(pingCpu), 1)}`,
  });
  row({ id: "4", figure: "  load average (1 min) when the latency series ended", ours: loadAverage().toFixed(2) });
  const peak = { empty: [] as number[], version: [] as number[], ping: [] as number[] };
  for (let i = 0; i < Math.min(5, p.pgoctl); i++) {
    peak.empty.push(await peakRssMiB([empty], root));
    peak.version.push(await peakRssMiB([PGOCTL, "--version"], root));
    peak.ping.push(await peakRssMiB([PGOCTL, "-i", key.file, "-p", String(port), "--known-hosts", knownHosts, `127.0.0.1:${request}`], root));
  }
  raw["s4.peakRss"] = peak;
  row({
    id: "4", figure: `  peak RSS (ru_maxrss from GNU time), median of ${peak.ping.length}: the empty program / \`pgoctl --version\` / \`pgoctl ping\``,
    ours: `${median(peak.empty).toFixed(1)} / ${median(peak.version).toFixed(1)} / ${median(peak.ping).toFixed(1)} MiB`,
  });
  lat("ping via OpenSSH `ssh`", b, "p50 <= 20 ms", (p50) => p50 <= 20);
  lat("ping via in-process ssh2 client (new connection each)", c, "p50 <= 25 ms, p99 <= 60 ms", (p50, p99) => p50 <= 25 && p99 <= 60);

  // Commands that run docker compose on pgod's side: pgoctl, ssh, and compose alone (the CLI, as a user runs it).
  const composeEnv = { PATH: engine.path, HOME: "/root", LANG: "C.UTF-8", ...(engine.dockerHost ? { DOCKER_HOST: engine.dockerHost } : {}) };
  const project = name; // pgod names the compose project after the service
  const n2 = Math.max(1, Math.min(10, p.pgoctl));
  for (const [cmd, args] of [["ps", []], ["logs", ["--tail", "10"]]] as const) {
    const direct = async (): Promise<number> => (await run(["docker", "compose", "-p", project, cmd, ...args], { env: composeEnv, timeoutMs: 60_000 })).ms;
    const xs = await series(`pgoctl ${cmd}`, n2, 1, () => pgoctlCmd(cmd, ...args));
    const ys = await series(`ssh ${cmd}`, n2, 1, () => sshCmd([cmd, ...args].join(" ")));
    const zs = await series(`docker compose ${cmd}`, n2, 1, direct);
    raw[`s4.${cmd}`] = { pgoctl: xs, ssh: ys, compose: zs };
    const what = `${cmd}${args.length ? ` ${args.join(" ")}` : ""}`;
    lat(`\`${what}\` via \`dist/pgoctl\``, xs, "(informational)", () => true);
    lat(`\`${what}\` via OpenSSH \`ssh\``, ys, "(informational)", () => true);
    lat(`  \`docker compose ${what}\` alone (the CLI, ${engine.kind} engine): compose's part`, zs, "(informational)", () => true);
    row({ id: "4", figure: `  pgo's part of \`${what}\` via pgoctl: p50 minus compose's p50`, ours: ms(percentile(xs, 50) - percentile(zs, 50), 1) });
  }

  // Throughput: 20 concurrent clients in this process, a new SSH connection per request (DECISIONS #11).
  const c0 = cpuTimes(pg.pid);
  const u0 = process.cpuUsage();
  const r = await load(20, p.load, p.loadMs, inproc);
  const u1 = process.cpuUsage(u0);
  const d = cpuDelta(c0, cpuTimes(pg.pid));
  const rps = r.done / r.seconds;
  const pgodMs = (d.total * 1000) / r.done;
  raw["s4.load"] = { ...r, pgodCpu: d, generatorCpuUs: u1 };
  if (r.errors > 0) notes.push(`In-process load: ${r.errors} of ${r.done + r.errors} requests failed; first: ${r.firstError}`);
  row({ id: "4", figure: `ping throughput, 20 concurrent in-process clients (${r.done} requests${r.errors ? `, ${r.errors} errors` : ""})`, ours: `${rps.toFixed(0)} req/s`, target: ">= 100 req/s", verdict: verdict(rps >= 100 && r.errors === 0) });
  row({ id: "4", figure: "  pgod CPU per request during that load", ours: ms(pgodMs, 2), target: "<= 5 ms", verdict: verdict(pgodMs <= 5) });
  row({ id: "4", figure: "  load generator CPU per request (same 2 cores)", ours: ms(((u1.user + u1.system) / 1000) / r.done, 2) });

  // The same with whole processes as clients, for comparison with the original's figure.
  for (const [what, f] of [["`pgoctl` processes", pgoctl], ["OpenSSH `ssh` processes", openssh]] as const) {
    const q0 = cpuTimes(pg.pid);
    const cpuBefore = cpu.ping.length;
    const q = await load(20, p.procLoad, p.loadMs, f);
    const qd = cpuDelta(q0, cpuTimes(pg.pid));
    const qps = q.done / q.seconds;
    const isPgoctl = what.includes("pgoctl");
    row({
      id: "4", figure: `  ping throughput, 20 concurrent ${what} (${q.done} requests)`,
      ours: `${qps.toFixed(0)} req/s, pgod ${ms((qd.total * 1000) / q.done, 2)}/req${isPgoctl ? `, pgoctl ${ms(median(cpu.ping.slice(cpuBefore)), 1)} CPU/process` : ""}`,
      target: isPgoctl ? ">= 45 req/s" : "(informational)", verdict: isPgoctl ? verdict(qps >= 45 && q.errors === 0) : "",
    });
    if (q.errors > 0) notes.push(`${what}: ${q.errors} requests failed; first: ${q.firstError}`);
  }
  await pg.stop();
}

// ---------------------------------------------------------------------------------------------
// 5b. Start-up

async function startup(engine: Engine, p: ReturnType<typeof plan>["s5"]): Promise<void> {
  say(`5: start-up of dist/pgod to the SSH port accepting, ${p.starts} starts`);
  const root = await tempDir("s5");
  const repo = await Repo.create(join(root, "repo"), { "compose.yaml": composeFile(0) });
  const name = `${RUN_PREFIX}start`;
  const services = [{ name, repository: repo.bare }];
  // A stop file keeps the service down: no containers, and pgod stops at once when asked.
  await Bun.write(join(root, "dir", `${name}.stop`), "");
  const first = await Pgod.start({ root, engine, interval: "10m", services, tag: "first" });
  await first.waitForLog(/msg="stop file present/, { timeoutMs: 120_000 });
  await first.stop();

  const times: number[] = [];
  let phases = "";
  for (let i = 0; i < p.starts; i++) {
    const port = await freePort();
    const pg = await Pgod.start({ root, engine, interval: "10m", services, ssh: `127.0.0.1:${port}`, tag: `start-${i}` });
    const t0 = pg.startedAt;
    const at = await waitFor("the SSH port to accept", async () => ((await canConnect(port)) ? performance.now() : (pg.exitCode !== null ? Promise.reject(new Error(`pgod exited ${pg.exitCode}`)) : undefined)), 30_000, 1);
    times.push(at - t0);
    await pg.stop();
    // Where the time went, from the log's millisecond timestamps (the last start's).
    phases = pg.log().split("\n").map((l) => /^(\S+Z) \w+ msg=("[^"]*"|\S+)/.exec(l)).filter((m) => m !== null)
      .filter((m) => /starting|listening/.test(m[2]!)).map((m) => `+${Date.parse(m[1]!) - pg.startedWall} ms ${m[2]!.replace(/"/g, "")}`).join(", ");
  }
  notes.push(`Start-up of dist/pgod, from its log (ms after spawn, last start): ${phases}; SSH port accepting at +${Math.round(times.at(-1)!)} ms.`);
  // The runtime's own start: the same 110 MB executable doing nothing but print its version.
  const version: number[] = [];
  for (let i = 0; i < p.starts; i++) version.push((await run([PGOD, "--version"])).ms);
  raw["s5.startup"] = { times, version };
  const s = median(times);
  row({ id: "5", figure: `start-up of dist/pgod to SSH port accepting (median of ${times.length})`, ours: ms(s), target: "<= 150 ms", verdict: verdict(s <= 150) });
  row({ id: "5", figure: "  `dist/pgod --version` (process start floor of the runtime)", ours: ms(median(version)) });
}

// ---------------------------------------------------------------------------------------------
// Main

function table(info: Record<string, string>, o: Options, loads: [number, number], seconds: number): string {
  const lines: string[] = [];
  lines.push(`pgo benchmark (${o.quick ? "--quick" : "full"}, engine ${o.engine}) on ${new Date().toISOString().slice(0, 16)}Z, ${Math.round(seconds)} s`);
  lines.push("");
  lines.push(`| machine | |`);
  lines.push(`| --- | --- |`);
  for (const [k, v] of Object.entries(info)) lines.push(`| ${k} | ${v} |`);
  lines.push(`| load average (1 min) at start / end | ${loads[0].toFixed(2)} / ${loads[1].toFixed(2)} |`);
  lines.push("");
  lines.push("| # | figure | ours | baseline | target | verdict |");
  lines.push("| --- | --- | --- | --- | --- | --- |");
  for (const r of [...rows].sort((x, y) => x.id.localeCompare(y.id))) lines.push(`| ${r.id} | ${r.figure} | ${r.ours} | ${r.baseline ?? ""} | ${r.target ?? ""} | ${r.verdict ?? ""} |`);
  if (notes.length > 0) lines.push("", ...notes);
  return lines.join("\n") + "\n";
}

async function main(): Promise<number> {
  const o = parseOptions(process.argv.slice(2));
  const p = plan(o.quick);
  const startedAt = performance.now();
  const load0 = loadAverage();
  say(`RUN_PREFIX=${RUN_PREFIX}`);
  for (const f of [PGOD, PGOCTL]) {
    if (!(await Bun.file(f).exists())) throw new Error(`Cannot find "${f}": run "bash scripts/build.sh" first`);
  }
  const clk = (await run(["getconf", "CLK_TCK"], { check: false })).stdout.trim();
  if (clk !== "100") throw new Error(`Cannot read /proc CPU times: CLK_TCK is ${clk}, not 100`);
  const needsReal = o.engine === "real" && (o.only.has(1) || o.only.has(3) || o.only.has(4) || o.only.has(5));
  if (needsReal) {
    const v = await run(["docker", "version", "--format", "{{.Server.Version}}"], { check: false, timeoutMs: 60_000 });
    if (v.code !== 0) throw new Error(`The real Docker engine does not answer (use --engine=fake): ${v.stderr.trim()}`);
    atCleanup("containers of this run", async () => {
      const n = await sweepRealContainers();
      if (n > 0) say(`removed ${n} container(s) of this run`);
    });
  }
  const info = await machine(needsReal);
  const engine: Engine = o.engine === "real" ? realEngine() : await fakeEngine("main");
  const timed = async (what: string, f: () => Promise<void>): Promise<void> => {
    const t = performance.now();
    await f();
    say(`${what} took ${((performance.now() - t) / 1000).toFixed(1)} s`);
  };
  if (o.only.has(1)) await timed("section 1", () => idleCycle(engine, p.s1, o.remotes));
  if (o.only.has(1) && engine.kind === "real") await sweepRealContainers(); // 50 idle containers would weigh on what follows
  if (o.only.has(2) || o.only.has(5)) await timed("section 2", () => growth(o.only.has(2) ? p.s2 : { ...p.s2, sizes: [p.s5.rssSize] }, p.s5.rssSize, o.remotes === "ssh" ? "http" : o.remotes));
  if (o.only.has(3)) await timed("section 3", () => changeToRunning(engine, p.s3));
  if (o.only.has(4)) await timed("section 4", () => ping(engine, p.s4));
  if (o.only.has(5)) await timed("section 5", () => startup(engine, p.s5));
  const text = table(info, o, [load0, loadAverage()], (performance.now() - startedAt) / 1000);
  process.stdout.write(text);
  if (o.json) writeFileSync(o.json, JSON.stringify({ machine: info, rows, notes, raw }, null, 2));
  return 0;
}

// The first call decides the exit code; every call waits for the one cleanup (a deadline or a
// signal makes main() fail while cleanup runs, and that failure must not exit before it ends).
let finishing: { code: number; done: Promise<void> } | null = null;
async function finish(code: number): Promise<never> {
  finishing ??= { code, done: cleanupAll() };
  await finishing.done;
  process.exit(finishing.code);
}

for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.on(sig, () => {
    say(`${sig}: cleaning up`);
    void finish(130);
  });
}
const deadlineS = parseOptions(process.argv.slice(2)).deadlineS;
setTimeout(() => {
  say(`deadline of ${deadlineS} s passed: cleaning up`);
  void finish(124);
}, deadlineS * 1000).unref();

try {
  await finish(await main());
} catch (e) {
  say(`failed: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
  await finish(1);
}
