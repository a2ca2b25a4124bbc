/**
 * What only the benchmark (bench/bench.ts) needs on top of the test toolkit (test/kit/: processes,
 * waiting, repositories, pgod): a cleanup registry that runs even when the benchmark fails or is
 * interrupted, CPU accounting, the real and a fake Docker engine, pgod counted by perf, and facts
 * about the machine.
 */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { cpus } from "node:os";
import { join, resolve } from "node:path";
import { composeFile as testCompose, listContainers } from "../test/kit/docker.ts";
import type { ApiContainer } from "../test/kit/docker.ts";
import { configText, Pgod as KitPgod } from "../test/kit/pgod.ts";
import type { PgodOptions, ServiceSpec } from "../test/kit/pgod.ts";
import { cpuTimes, endAll, run } from "../test/kit/process.ts";
import type { CpuTimes } from "../test/kit/process.ts";
import { Repo as KitRepo } from "../test/kit/repo.ts";
import { randomId, tempDir as makeTempDir } from "../test/kit/temp.ts";
import { waitForValue } from "../test/kit/wait.ts";

/** The repository root. */
export const ROOT: string = resolve(import.meta.dir, "..");

/** Every compose project, temp dir and process of this run carries this prefix. */
export const RUN_PREFIX: string = `pgobench-${randomId(5)}-`;

// ---------------------------------------------------------------------------------------------
// Cleanup

type Undo = () => Promise<void> | void;
const undos: Array<{ what: string; fn: Undo }> = [];

/** Registers `fn` to run at cleanup (last registered runs first). */
export function atCleanup(what: string, fn: Undo): void {
  undos.push({ what, fn });
}

/** Ends every process the toolkit started, then runs every registered cleanup once; never throws. */
export async function cleanupAll(): Promise<void> {
  await endAll(8000);
  while (undos.length > 0) {
    const u = undos.pop()!;
    try {
      await u.fn();
    } catch (e) {
      console.error(`cleanup of ${u.what}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
}

/** A temp dir (mode 0755), removed at cleanup. */
export async function tempDir(tag: string): Promise<string> {
  const d = makeTempDir(`${RUN_PREFIX}${tag}-`);
  atCleanup(`temp dir ${d}`, () => rm(d, { recursive: true, force: true }));
  return d;
}

// ---------------------------------------------------------------------------------------------
// Processes

/** Total CPU seconds (own plus children) between two readings. */
export function cpuDelta(a: CpuTimes, b: CpuTimes): { self: number; children: number; total: number } {
  const self = b.self - a.self;
  const children = b.children - a.children;
  return { self, children, total: self + children };
}

/** Sum of own CPU seconds of `pids` (processes that are gone count 0). */
export function ownCpu(pids: number[]): number {
  let t = 0;
  for (const p of pids) {
    try {
      t += cpuTimes(p).self;
    } catch {
      // gone
    }
  }
  return t;
}

/**
 * Polls `probe` until it returns a value other than undefined; a probe that throws ends the wait.
 * The benchmark's shape of the toolkit's `waitForValue`.
 */
export function waitFor<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs: number, intervalMs = 100): Promise<T> {
  return waitForValue(what, probe, { timeoutMs, intervalMs, retryErrors: false });
}

// ---------------------------------------------------------------------------------------------
// Git

/**
 * A repository as the benchmark drives it: `write`, then `commit(message)` (no push), then
 * `push()`, which returns how long the push took, so that a push can be timed alone.
 */
export interface Repo {
  readonly bare: string;
  readonly work: string;
  write(files: Record<string, string>): void;
  commit(message: string): Promise<string>;
  push(): Promise<number>;
}
export const Repo = {
  async create(root: string, files: Record<string, string>): Promise<Repo> {
    const r = await KitRepo.create(root, files);
    return { bare: r.bare, work: r.work, write: (f) => r.write(f), commit: (m) => r.commitAll(m), push: () => r.push() };
  },
};

/** A compose file with one busybox httpd service; `rev` lands in its environment, so a new rev recreates it. */
export function composeFile(rev: number): string {
  return testCompose({ env: { REV: String(rev) } });
}

// ---------------------------------------------------------------------------------------------
// Docker engines

/** What pgod and the benchmark need of an engine: a PATH for `docker`, a socket, and container state. */
export interface Engine {
  readonly kind: "real" | "fake";
  /** PATH for pgod (and so its children) and for the benchmark's own docker commands. */
  readonly path: string;
  /** DOCKER_HOST for pgod, or undefined for the default socket. */
  readonly dockerHost: string | undefined;
  /** Ids of running containers of `project`. */
  running(project: string): Promise<string[]>;
}

const SYSTEM_PATH = process.env["PATH"] || "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** The real Docker engine on its default socket. */
export function realEngine(): Engine {
  return {
    kind: "real",
    path: SYSTEM_PATH,
    dockerHost: undefined,
    running: async (project) =>
      (await listContainers(`com.docker.compose.project=${project}`)).filter((c) => c.State === "running").map((c) => c.Id),
  };
}

/**
 * Removes every container of this run's compose projects (prefix RUN_PREFIX) from the real
 * engine, in one `docker rm --force`.
 */
export async function sweepRealContainers(): Promise<number> {
  const all = await listContainers("com.docker.compose.project").catch(() => []);
  const ids = all.filter((c) => (c.Labels?.["com.docker.compose.project"] ?? "").startsWith(RUN_PREFIX)).map((c) => c.Id);
  if (ids.length > 0) await run(["docker", "rm", "--force", ...ids], { check: false, timeoutMs: 300_000 });
  return ids.length;
}

/**
 * The fake engine: a copy of test/fakebin (whose `docker` records calls and keeps the state of
 * projects in state/<project>) first on PATH, and a tiny HTTP server on a Unix socket that
 * answers GET /containers/json from that state. A container's id changes with every `up`
 * (it is derived from the state file's mtime), as a recreated container's id does.
 */
export async function fakeEngine(tag: string): Promise<Engine & { stop(): void; calls(): string[] }> {
  const root = await tempDir(`fake-${tag}`);
  const bin = join(root, "fakebin");
  await run(["cp", "-a", join(ROOT, "test/fakebin"), bin]);
  await rm(join(bin, "calls.log"), { force: true });
  await rm(join(bin, "state"), { recursive: true, force: true });
  await mkdir(join(bin, "state"));
  const socket = join(root, "docker.sock");
  const stateDir = join(bin, "state");
  const containersOf = (project: string | null): ApiContainer[] => {
    const names = project === null ? readdirSync(stateDir) : [project];
    const out: ApiContainer[] = [];
    for (const p of names) {
      const f = join(stateDir, p);
      let st;
      try {
        st = statSync(f);
      } catch {
        continue;
      }
      const exited = st.size > 0 && readFileSync(f, "utf8").trim() === "exited";
      out.push({
        Id: `${p}-${st.mtimeMs}`,
        State: exited ? "exited" : "running",
        Labels: { "com.docker.compose.project": p, "com.docker.compose.service": "web" },
        ...{ Status: exited ? "Exited (0)" : "Up 1 minute" },
      });
    }
    return out;
  };
  const server = Bun.serve({
    unix: socket,
    fetch(req) {
      const url = new URL(req.url);
      if (req.method !== "GET" || !/\/containers\/json$/.test(url.pathname)) return new Response("not found", { status: 404 });
      let project: string | null = null;
      try {
        const f = JSON.parse(url.searchParams.get("filters") ?? "{}") as { label?: string[] };
        for (const l of f.label ?? []) {
          const m = /^com\.docker\.compose\.project=(.+)$/.exec(l);
          if (m) project = m[1]!;
        }
      } catch {
        return new Response("bad filters", { status: 400 });
      }
      return Response.json(containersOf(project));
    },
  });
  const stop = (): void => void server.stop(true);
  atCleanup(`fake engine socket ${socket}`, stop);
  return {
    kind: "fake",
    path: `${bin}:${SYSTEM_PATH}`,
    dockerHost: `unix://${socket}`,
    running: async (project) => containersOf(project).filter((c) => c.State === "running").map((c) => c.Id),
    stop,
    calls: () => {
      try {
        return readFileSync(join(bin, "calls.log"), "utf8").split("\n").filter(Boolean);
      } catch {
        return [];
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------
// pgod

export type { ServiceSpec };

/** How the benchmark starts pgod. */
interface BenchPgodOptions {
  /** Config, log, `dir/` and `data/` go here. */
  root: string;
  services: ServiceSpec[];
  engine: Engine;
  interval: string;
  ssh?: string;
  args?: string[];
  tag?: string;
  /** The command that runs pgod (default: dist/pgod), e.g. bun with profiler flags on src/cmd/pgod.ts. */
  command?: string[];
  /**
   * Run pgod under `perf stat`, counting every program its process tree starts (the
   * sched_process_exec tracepoint, inherited by children) in 100 ms intervals. perf counts
   * without ptrace, so pgod runs at full speed and no child is ever stopped.
   */
  countExecs?: boolean;
  /** More environment for pgod (BUN_OPTIONS for a profile, say). */
  env?: Record<string, string>;
}

/** A running pgod as the benchmark sees it: the toolkit's, plus perf's count of the programs it starts. */
class BenchPgod extends KitPgod {
  /** perf stat's interval file, when pgod runs under perf. */
  perfFile: string | null = null;
  /** performance.now() when perf started counting (at pgod's exec): time 0 of its intervals. */
  perfOrigin = 0;

  /** The SSH port and host key fingerprint, from the log. */
  ssh(): Promise<{ port: number; hostKey: string }> {
    return this.sshListening(60_000);
  }

  /** The webhook server's address, from the log. */
  webhook(): Promise<string> {
    return this.address("webhook", 60_000);
  }

  /** Programs started by pgod's process tree between two times (performance.now()), from perf's intervals. */
  execsBetween(from: number, to: number): number {
    if (this.perfFile === null) return NaN;
    let text = "";
    try {
      text = readFileSync(this.perfFile, "utf8");
    } catch {
      return NaN;
    }
    const a = (from - this.perfOrigin) / 1000;
    const b = (to - this.perfOrigin) / 1000;
    let n = 0;
    let seen = false;
    for (const l of text.split("\n")) {
      const f = l.trim().split(",");
      if (f.length < 4 || f[3] !== "sched:sched_process_exec") continue;
      const t = Number(f[0]);
      if (t > a && t <= b) n += Number(f[1]) || 0;
      if (t >= b) seen = true;
    }
    return seen ? n : NaN;
  }

  /** SIGTERM, then SIGKILL after `graceMs` (to pgod itself, also under perf). */
  override stop(graceMs = 40_000): Promise<void> {
    return super.stop(graceMs);
  }
}

/** Writes the config and starts pgod with `--debug` on loopback servers; cleanup stops it. */
async function startPgod(o: BenchPgodOptions): Promise<BenchPgod> {
  const tag = o.tag ?? "pgod";
  const config = join(o.root, `${tag}.toml`);
  const logFile = join(o.root, `${tag}.log`);
  await writeFile(config, configText(o.services));
  const env: Record<string, string> = { PATH: o.engine.path, HOME: "/root", LANG: "C.UTF-8" };
  if (o.engine.dockerHost) env["DOCKER_HOST"] = o.engine.dockerHost;
  Object.assign(env, o.env);
  const perfFile = o.countExecs ? join(o.root, `${tag}.perf`) : null;
  const options: PgodOptions = {
    config, logFile, dir: join(o.root, "dir"), datadir: join(o.root, "data"), interval: o.interval, env,
    args: ["--restart=false", ...(o.args ?? [])],
    ...(o.ssh ? { ssh: o.ssh } : {}),
    ...(o.command ? { command: o.command } : {}),
    ...(perfFile ? { wrapper: ["perf", "stat", "-I", "100", "-x", ",", "-e", "sched:sched_process_exec", "-o", perfFile, "--"] } : {}),
  };
  const pg = BenchPgod.start(options);
  pg.perfOrigin = pg.startedAt;
  if (perfFile) {
    const perfPid = pg.proc.pid;
    pg.pid = await waitFor("pgod to start under perf", () => {
      if (pg.proc.exitCode !== null) throw new Error(`perf stat exited ${pg.proc.exitCode}: see ${logFile}`);
      const kids = readFileSync(`/proc/${perfPid}/task/${perfPid}/children`, "utf8").trim().split(" ").filter(Boolean).map(Number);
      return kids.find((k) => {
        try {
          return readFileSync(`/proc/${k}/comm`, "utf8").trim() === "pgod";
        } catch {
          return false;
        }
      });
    }, 30_000, 2);
    // perf enables its counters when pgod execs, which was at most one poll ago.
    pg.perfFile = perfFile;
    pg.perfOrigin = performance.now();
  }
  // Not among the toolkit's processes: under perf, ending perf would leave pgod running. stop() signals pgod itself.
  atCleanup(`pgod ${pg.pid}`, () => pg.stop(10_000));
  return pg;
}

/** pgod as the benchmark runs it (see `BenchPgodOptions`). */
export type Pgod = BenchPgod;
export const Pgod = { start: startPgod };

/** A log line of a poll of the remote (`git ls-remote`, or in-process over HTTP): one per service per cycle. */
export const POLL = /msg=exec argv="git ls-remote |msg="polled the remote" /;
/** A log line of any child process. */
export const EXEC = /msg=exec argv=/;
/** A log line of a docker compose child. */
export const COMPOSE = /msg=exec argv="docker compose /;
/** A log line of `docker compose ... up`. */
export const COMPOSE_UP = /msg=exec argv="docker compose [^"]* up\b/;

// ---------------------------------------------------------------------------------------------
// Machine

/** Facts about the machine the benchmark ran on. */
export async function machine(enginePresent: boolean): Promise<Record<string, string>> {
  const cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? cpus()[0]?.model ?? "unknown";
  const memKb = Number(/^MemTotal:\s+(\d+)/m.exec(readFileSync("/proc/meminfo", "utf8"))?.[1] ?? 0);
  const kernel = readFileSync("/proc/sys/kernel/osrelease", "utf8").trim();
  let docker = "not used (--engine=fake)";
  if (enginePresent) {
    const v = await run(["docker", "version", "--format", "{{.Server.Version}} (client {{.Client.Version}})"], { check: false, timeoutMs: 30_000 });
    const c = await run(["docker", "compose", "version", "--short"], { check: false, timeoutMs: 30_000 });
    docker = `engine ${v.stdout.trim() || "?"}, compose ${c.stdout.trim() || "?"}`;
  }
  const os = /^PRETTY_NAME="?([^"\n]+)/m.exec(existsSync("/etc/os-release") ? readFileSync("/etc/os-release", "utf8") : "")?.[1] ?? "";
  return {
    cores: String(cpus().length),
    model,
    memory: `${(memKb / 1024 / 1024).toFixed(1)} GiB`,
    kernel: `${kernel}${os ? ` (${os})` : ""}`,
    bun: Bun.version,
    docker,
  };
}

/** The 1-minute load average. */
export function loadAverage(): number {
  return Number(readFileSync("/proc/loadavg", "utf8").split(" ")[0]);
}

/** A finished process: wall time, its exit status and output, and its own CPU (ru_utime + ru_stime, ms). */
export async function runUsage(argv: string[], env?: Record<string, string | undefined>): Promise<{ code: number; stdout: string; stderr: string; ms: number; cpuMs: number }> {
  const t = performance.now();
  const proc = Bun.spawn(argv, { cwd: "/", env: env ?? process.env, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => proc.kill("SIGKILL"), 30_000);
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  clearTimeout(timer);
  const ms = performance.now() - t;
  // Bun reports CPU times in microseconds.
  const usage = proc.resourceUsage();
  const cpuMs = usage ? Number(usage.cpuTime.user + usage.cpuTime.system) / 1000 : NaN;
  return { code, stdout, stderr, ms, cpuMs };
}

/**
 * A process's peak RSS in MiB, from GNU time. Not Bun's resourceUsage().maxRSS: Bun starts
 * children with vfork, and Linux carries the parent's (this benchmark's) RSS into the child's
 * ru_maxrss at its exec, so every child would seem at least as large as the benchmark.
 */
export async function peakRssMiB(argv: string[], dir: string): Promise<number> {
  const out = join(dir, "time.out");
  await run(["/usr/bin/time", "-f", "%M", "-o", out, ...argv], { cwd: "/", timeoutMs: 30_000 });
  return Number((await readFile(out, "utf8")).trim().split("\n").at(-1)) / 1024;
}
