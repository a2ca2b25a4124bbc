/**
 * Helpers for the benchmark (bench/bench.ts): processes and their /proc accounting, git
 * repositories in temp dirs, pgod instances with their logs, a fake Docker engine, statistics,
 * and a cleanup registry that runs even when the benchmark fails or is interrupted.
 */
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, rmdirSync, statSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { cpus, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";

/** The repository root. */
export const ROOT: string = resolve(import.meta.dir, "..");
/** The binaries under test. */
export const PGOD: string = process.env["PGOD_BIN"] || join(ROOT, "dist/pgod");
export const PGOCTL: string = process.env["PGOCTL_BIN"] || join(ROOT, "dist/pgoctl");
/** The local test image (never pulled). */
export const IMAGE = "pgo-busybox:1";

const CLK_TCK = 100; // getconf CLK_TCK on Linux x86_64; checked at start-up by bench.ts

/** A random lowercase id. */
export function randomId(n: number): string {
  const abc = "abcdefghijklmnopqrstuvwxyz0123456789";
  let s = "";
  for (let i = 0; i < n; i++) s += abc[Math.floor(Math.random() * abc.length)];
  return s;
}

/** Every compose project, temp dir and process of this run carries this prefix. */
export const RUN_PREFIX: string = `pgobench-${randomId(5)}-`;

// ---------------------------------------------------------------------------------------------
// Cleanup

type Undo = () => Promise<void> | void;
const undos: Array<{ what: string; fn: Undo }> = [];
const live = new Set<{ kill(sig?: number | NodeJS.Signals): void; exited: Promise<number> }>();

/** Registers `fn` to run at cleanup (last registered runs first). */
export function atCleanup(what: string, fn: Undo): void {
  undos.push({ what, fn });
}

/** Runs every registered cleanup once; never throws. */
export async function cleanupAll(): Promise<void> {
  for (const p of [...live]) {
    try {
      p.kill("SIGTERM");
    } catch {
      // gone
    }
  }
  await Promise.race([Promise.allSettled([...live].map((p) => p.exited)), Bun.sleep(8000)]);
  for (const p of [...live]) {
    try {
      p.kill("SIGKILL");
    } catch {
      // gone
    }
  }
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
  const d = await mkdtemp(join(tmpdir(), `${RUN_PREFIX}${tag}-`));
  await chmod(d, 0o755);
  atCleanup(`temp dir ${d}`, () => rm(d, { recursive: true, force: true }));
  return d;
}

// ---------------------------------------------------------------------------------------------
// Processes

/** The result of a finished command. */
export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a command to completion (bounded by `timeoutMs`); throws when it fails and `check` is on. */
export async function run(
  argv: string[],
  o: { cwd?: string; env?: Record<string, string | undefined>; check?: boolean; timeoutMs?: number; stdin?: string } = {},
): Promise<Ran> {
  const started = performance.now();
  const proc = Bun.spawn(argv, {
    cwd: o.cwd ?? "/",
    env: o.env ?? process.env,
    stdin: o.stdin === undefined ? "ignore" : new TextEncoder().encode(o.stdin),
    stdout: "pipe",
    stderr: "pipe",
  });
  live.add(proc);
  const timer = setTimeout(() => proc.kill("SIGKILL"), o.timeoutMs ?? 300_000);
  try {
    const [stdout, stderr, code] = await Promise.all([
      new Response(proc.stdout).text(),
      new Response(proc.stderr).text(),
      proc.exited,
    ]);
    const ms = performance.now() - started;
    if ((o.check ?? true) && code !== 0) {
      throw new Error(`Command failed: ${JSON.stringify(argv)} exited ${code} in "${o.cwd ?? "/"}": ${stderr.trim().slice(-2000)}`);
    }
    return { code, stdout, stderr, ms };
  } finally {
    clearTimeout(timer);
    live.delete(proc);
  }
}

/** Starts a long-running process that cleanup ends if it is still there. */
export function spawnTracked(
  argv: string[],
  o: { cwd?: string; env?: Record<string, string | undefined>; stdout?: number | "ignore" | "pipe"; stderr?: number | "ignore" | "pipe" } = {},
): ReturnType<typeof Bun.spawn> {
  const proc = Bun.spawn(argv, {
    cwd: o.cwd ?? "/",
    env: o.env ?? process.env,
    stdin: "ignore",
    stdout: o.stdout ?? "ignore",
    stderr: o.stderr ?? "ignore",
  });
  live.add(proc);
  void proc.exited.then(() => live.delete(proc));
  return proc;
}

/** CPU seconds of a process from /proc/<pid>/stat: its own, and that of its waited-for children. */
export interface CpuTimes {
  self: number;
  children: number;
}

/** Reads utime+stime and cutime+cstime of `pid`. */
export function cpuTimes(pid: number): CpuTimes {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Field 2 (comm) may hold spaces: the fields after it start past the last ')'.
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // f[0] is field 3 (state): utime is field 14, so f[11]; stime f[12]; cutime f[13]; cstime f[14].
  const n = (i: number): number => Number(f[i]) / CLK_TCK;
  return { self: n(11) + n(12), children: n(13) + n(14) };
}

/** Total CPU seconds (own plus children) between two readings. */
export function cpuDelta(a: CpuTimes, b: CpuTimes): { self: number; children: number; total: number } {
  const self = b.self - a.self;
  const children = b.children - a.children;
  return { self, children, total: self + children };
}

/** VmRSS and VmHWM of `pid`, in MiB. */
export function memory(pid: number): { rssMiB: number; hwmMiB: number } {
  const s = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(s)?.[1] ?? NaN);
  return { rssMiB: kb("VmRSS") / 1024, hwmMiB: kb("VmHWM") / 1024 };
}

/** Pids of processes whose command name (comm) is `name`. */
export function pidsNamed(name: string): number[] {
  const out: number[] = [];
  for (const p of readdirSync("/proc")) {
    if (!/^\d+$/.test(p)) continue;
    try {
      if (readFileSync(`/proc/${p}/comm`, "utf8").trim() === name) out.push(Number(p));
    } catch {
      // gone meanwhile
    }
  }
  return out;
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

/** A free TCP port on 127.0.0.1 (bound and released). */
export async function freePort(): Promise<number> {
  const s = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = s.port;
  s.stop(true);
  return port;
}

/** Whether a TCP connection to 127.0.0.1:`port` is accepted. */
export function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => {
      s.destroy();
      resolve(false);
    });
  });
}

/** Polls `probe` until it returns a value other than undefined, or throws after `timeoutMs`. */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs: number, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`Timed out after ${Math.round(timeoutMs / 1000)} s waiting for ${what}`);
    await Bun.sleep(intervalMs);
  }
}

// ---------------------------------------------------------------------------------------------
// Statistics

/** The p-th percentile (0..100) by nearest rank of unsorted values; NaN for none. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * s.length);
  return s[Math.min(s.length - 1, Math.max(0, rank - 1))]!;
}

/** The median (mean of the middle two for an even count); NaN for none. */
export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

// ---------------------------------------------------------------------------------------------
// Git

const GIT_ID = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"];

/** A bare repository (the remote pgod follows) and a work clone the benchmark commits from. */
export class Repo {
  private constructor(readonly bare: string, readonly work: string) {}

  /** Makes `<root>/remote.git` and `<root>/work` with `files` as the first commit. */
  static async create(root: string, files: Record<string, string>): Promise<Repo> {
    const bare = join(root, "remote.git");
    const work = join(root, "work");
    await run(["git", "init", "--quiet", "--bare", "-b", "main", bare]);
    await run(["git", "init", "--quiet", "-b", "main", work]);
    await run(["git", "-C", work, "remote", "add", "origin", bare]);
    const r = new Repo(bare, work);
    await r.write(files);
    await r.commit("first");
    await r.push();
    return r;
  }

  /** Writes `files` into the work clone. */
  async write(files: Record<string, string>): Promise<void> {
    for (const [path, text] of Object.entries(files)) {
      await mkdir(dirname(join(this.work, path)), { recursive: true });
      await writeFile(join(this.work, path), text);
    }
  }

  /** Commits everything in the work clone. */
  async commit(message: string): Promise<void> {
    await run(["git", "-C", this.work, "add", "--all"]);
    await run(["git", ...GIT_ID, "-C", this.work, "commit", "--quiet", "-m", message]);
  }

  /** Pushes main to the bare repository; returns how long the push took (ms). */
  async push(): Promise<number> {
    return (await run(["git", "-C", this.work, "push", "--quiet", "origin", "HEAD:refs/heads/main"])).ms;
  }
}

/** Copies a bare repository (a cheap way to make many identical remotes). */
export async function copyRepo(bare: string, dest: string): Promise<void> {
  await run(["cp", "-a", bare, dest]);
}

/** A compose file with one busybox httpd service; `rev` lands in its environment, so a new rev recreates it. */
export function composeFile(rev: number): string {
  return `services:
  web:
    image: ${IMAGE}
    pull_policy: never
    network_mode: none
    # httpd runs as PID 1 and ignores SIGTERM: do not make every stop wait 10 s.
    stop_signal: SIGKILL
    command: ["/bin/httpd", "-f", "-p", "8080"]
    environment:
      REV: "${rev}"
`;
}

/** Makes an unencrypted ed25519 key pair; returns the private key file and the public key line. */
export async function makeKey(dir: string, name: string): Promise<{ file: string; pub: string }> {
  const file = join(dir, name);
  await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", `${name}@bench`, "-f", file]);
  return { file, pub: await readFile(`${file}.pub`, "utf8") };
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
const REAL_SOCKET = "/var/run/docker.sock";

interface ApiContainer {
  Id: string;
  State: string;
  Labels: Record<string, string> | null;
}

/** Lists containers on a socket (all states) with a label filter. */
async function listContainers(socket: string, label: string): Promise<ApiContainer[]> {
  const filters = encodeURIComponent(JSON.stringify({ label: [label] }));
  const res = await fetch(`http://docker/containers/json?all=1&filters=${filters}`, {
    unix: socket,
    signal: AbortSignal.timeout(10_000),
  } as RequestInit);
  if (!res.ok) throw new Error(`Cannot list containers: the engine answered ${res.status}`);
  return (await res.json()) as ApiContainer[];
}

/** The real Docker engine on its default socket. */
export function realEngine(): Engine {
  return {
    kind: "real",
    path: SYSTEM_PATH,
    dockerHost: undefined,
    running: async (project) =>
      (await listContainers(REAL_SOCKET, `com.docker.compose.project=${project}`)).filter((c) => c.State === "running").map((c) => c.Id),
  };
}

/**
 * Removes every container of this run's compose projects (prefix RUN_PREFIX) from the real
 * engine, in one `docker rm --force`.
 */
export async function sweepRealContainers(): Promise<number> {
  const all = await listContainers(REAL_SOCKET, "com.docker.compose.project").catch(() => []);
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

/** One `[[services]]` table. */
export interface ServiceSpec {
  name: string;
  repository: string;
  /** The service's user (default root). */
  user?: string;
  extra?: string;
}

/** The TOML text of a config. */
export function configText(services: ServiceSpec[]): string {
  return services
    .map((s) => `[[services]]\nname = "${s.name}"\nuser = "${s.user ?? "root"}"\nrepository = "${s.repository}"\n${s.extra ?? ""}`)
    .join("\n");
}

/** A running dist/pgod with its log file, read incrementally. */
export class Pgod {
  exitCode: number | null = null;
  readonly exited: Promise<number>;
  /** Date.now() when pgod was spawned, to compare with the timestamps of its log. */
  startedWall = 0;
  private text = "";
  private readOffset = 0;

  private constructor(
    readonly proc: ReturnType<typeof Bun.spawn>,
    /** pgod's own pid (under perf, proc is perf and this its child). */
    readonly pid: number,
    readonly logFile: string,
    readonly startedAt: number,
    /** perf stat's interval file, when pgod runs under perf. */
    readonly perfFile: string | null,
    /** performance.now() when perf started counting (at pgod's exec): time 0 of its intervals. */
    readonly perfOrigin: number,
  ) {
    this.exited = proc.exited.then((c) => (this.exitCode = c));
  }

  /** Writes the config and starts pgod with `--debug` on loopback servers. */
  static async start(o: {
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
  }): Promise<Pgod> {
    const tag = o.tag ?? "pgod";
    const config = join(o.root, `${tag}.toml`);
    const logFile = join(o.root, `${tag}.log`);
    await writeFile(config, configText(o.services));
    const env: Record<string, string> = { PATH: o.engine.path, HOME: "/root", LANG: "C.UTF-8" };
    if (o.engine.dockerHost) env["DOCKER_HOST"] = o.engine.dockerHost;
    Object.assign(env, o.env);
    const fd = openSync(logFile, "a");
    let proc;
    const perfFile = o.countExecs ? join(o.root, `${tag}.perf`) : null;
    const perf = perfFile ? ["perf", "stat", "-I", "100", "-x", ",", "-e", "sched:sched_process_exec", "-o", perfFile, "--"] : [];
    const startedWall = Date.now();
    const startedAt = performance.now();
    try {
      proc = Bun.spawn(
        [
          ...perf,
          ...(o.command ?? [PGOD]), "-c", config, "-d", join(o.root, "dir"), "--datadir", join(o.root, "data"), "-t", o.interval, "--debug",
          "-s", o.ssh ?? "127.0.0.1:0", "-m", "127.0.0.1:0", "--restart=false", ...(o.args ?? []),
        ],
        { cwd: "/", env, stdin: "ignore", stdout: fd, stderr: fd },
      );
    } finally {
      closeSync(fd);
    }
    let pid = proc.pid;
    let perfOrigin = startedAt;
    if (perfFile) {
      const perfPid = proc.pid;
      pid = await waitFor("pgod to start under perf", () => {
        if (proc.exitCode !== null) throw new Error(`perf stat exited ${proc.exitCode}: see ${logFile}`);
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
      perfOrigin = performance.now();
    }
    const pg = new Pgod(proc, pid, logFile, startedAt, perfFile, perfOrigin);
    pg.startedWall = startedWall;
    // Not in `live`: under perf, ending perf would leave pgod running. stop() signals pgod itself.
    atCleanup(`pgod ${pid}`, () => pg.stop(10_000));
    return pg;
  }

  /** The whole log so far (new bytes are read incrementally). */
  log(): string {
    let fd;
    try {
      fd = openSync(this.logFile, "r");
    } catch {
      return this.text;
    }
    try {
      const buf = Buffer.alloc(1 << 20);
      for (;;) {
        const n = readSync(fd, buf, 0, buf.length, this.readOffset);
        if (n <= 0) break;
        this.text += buf.subarray(0, n).toString("utf8");
        this.readOffset += n;
      }
    } finally {
      closeSync(fd);
    }
    return this.text;
  }

  /** Current length of the log, in characters: a mark for `lines(re, since)`. */
  mark(): number {
    return this.log().length;
  }

  /** Log lines after character `since` (and before `until`) that match `re`. */
  lines(re: RegExp, since = 0, until?: number): string[] {
    return this.log().slice(since, until).split("\n").filter((l) => re.test(l));
  }

  /** Waits until at least `count` lines after `since` match `re`. */
  async waitForLog(re: RegExp, o: { count?: number; since?: number; timeoutMs?: number } = {}): Promise<string[]> {
    const count = o.count ?? 1;
    return waitFor(`${count} log line(s) matching ${re} in ${this.logFile}`, () => {
      const ls = this.lines(re, o.since);
      if (ls.length >= count) return ls;
      if (this.exitCode !== null) throw new Error(`pgod exited with ${this.exitCode}; log tail:\n${this.log().split("\n").slice(-20).join("\n")}`);
      return undefined;
    }, o.timeoutMs ?? 120_000, 50).catch((e: Error) => {
      throw new Error(`${e.message}\nlog tail:\n${this.log().split("\n").slice(-20).join("\n")}`);
    });
  }

  /** The SSH port and host key fingerprint, from the log. */
  async ssh(): Promise<{ port: number; hostKey: string }> {
    const [line] = await this.waitForLog(/msg="SSH server listening" .*port=\d+ host_key=SHA256:/, { timeoutMs: 60_000 });
    const m = /port=(\d+) host_key=(SHA256:\S+)/.exec(line!)!;
    return { port: Number(m[1]), hostKey: m[2]! };
  }

  /** The webhook server's address, from the log. */
  async webhook(): Promise<string> {
    const [line] = await this.waitForLog(/msg="webhook server listening" address=\S+/, { timeoutMs: 60_000 });
    return /address=(\S+)/.exec(line!)![1]!;
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
  async stop(graceMs = 40_000): Promise<void> {
    if (this.exitCode !== null) return;
    const kill = (sig: NodeJS.Signals): void => {
      try {
        process.kill(this.pid, sig);
      } catch {
        // gone
      }
    };
    kill("SIGTERM");
    const t = await Promise.race([this.exited, Bun.sleep(graceMs).then(() => null)]);
    if (t === null) {
      kill("SIGKILL");
      this.proc.kill("SIGKILL");
      await this.exited;
      removeComposeCgroup(this.pid);
    }
  }
}

/**
 * Removes the memory cgroup `compose-<pid>` that a pgod killed with SIGKILL could not remove
 * itself (pgod makes it beside its own cgroup, which is the benchmark's). Best effort.
 */
function removeComposeCgroup(pid: number): void {
  let lines: string[] = [];
  try {
    lines = readFileSync("/proc/self/cgroup", "utf8").split("\n");
  } catch {
    return;
  }
  for (const l of lines) {
    const [id, controllers, path] = l.split(":");
    if (path === undefined) continue;
    const roots = id === "0" ? ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] : controllers!.split(",").includes("memory") ? ["/sys/fs/cgroup/memory"] : [];
    for (const r of roots) {
      try {
        rmdirSync(join(r, path, `compose-${pid}`));
      } catch {
        // not there, or not ours
      }
    }
  }
}

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
