/**
 * Processes for the tests and the benchmark: run a command to completion, start a long-running
 * one that can be ended later, free ports, and what /proc says about processes. No bun:test here:
 * the benchmark uses it too.
 */
import { readdirSync, readFileSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { connect } from "node:net";

/** The result of a finished command. */
export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
  /** Wall time from spawn to exit. */
  ms: number;
}

/** Options of `run`. */
export interface RunOptions {
  /** Working directory (default "/"). */
  cwd?: string;
  /** The child's whole environment (default: this process's). */
  env?: Record<string, string | undefined>;
  /** Throw when the exit status is not 0 (default true). */
  check?: boolean;
  /** SIGKILL after this long (default 300 s). */
  timeoutMs?: number;
  /** Text for stdin (default: none). */
  stdin?: string;
}

type Child = { kill(sig?: number | NodeJS.Signals): void; exited: Promise<number> };
/** Children started here that have not exited yet (for `endAll`). */
const live = new Set<Child>();

/** Runs a command to completion; throws with argv, status and stderr when it fails and `check` is on. */
export async function run(argv: string[], o: RunOptions = {}): Promise<Ran> {
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

/** Runs a command synchronously (for fixtures made before a test starts); throws unless it exits 0. */
export function runSync(argv: string[], o: { cwd?: string; env?: Record<string, string | undefined>; stdin?: string } = {}): string {
  const p = Bun.spawnSync(argv, {
    stdout: "pipe",
    stderr: "pipe",
    ...(o.cwd ? { cwd: o.cwd } : {}),
    ...(o.env ? { env: o.env } : {}),
    ...(o.stdin !== undefined ? { stdin: Buffer.from(o.stdin) } : {}),
  });
  if (p.exitCode !== 0) throw new Error(`${argv.join(" ")}: ${p.stderr.toString()}`);
  return p.stdout.toString();
}

/** Starts a long-running process that `endAll` ends if it is still there. */
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

/** Ends every child of `run` and `spawnTracked` still running: SIGTERM, then SIGKILL after `graceMs`. */
export async function endAll(graceMs = 8000): Promise<void> {
  const kill = (sig: NodeJS.Signals): void => {
    for (const p of [...live]) {
      try {
        p.kill(sig);
      } catch {
        // gone
      }
    }
  };
  kill("SIGTERM");
  await Promise.race([Promise.allSettled([...live].map((p) => p.exited)), Bun.sleep(graceMs)]);
  kill("SIGKILL");
}

/** A free TCP port on 127.0.0.1 (bound and released). */
export function freePort(): number {
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

const CLK_TCK = 100; // getconf CLK_TCK on Linux x86_64; the benchmark checks it at start-up

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

/** VmRSS and VmHWM of `pid`, in MiB; throws when the process is gone. */
export function memory(pid: number): { rssMiB: number; hwmMiB: number } {
  const s = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(s)?.[1] ?? NaN);
  return { rssMiB: kb("VmRSS") / 1024, hwmMiB: kb("VmHWM") / 1024 };
}

/** Resident memory of a process in MiB (VmRSS), or NaN when it is gone. */
export function rssMiB(pid: number): number {
  try {
    return memory(pid).rssMiB;
  } catch {
    return NaN;
  }
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

/** Processes whose argv holds every one of `words` as a whole argument, as `pid: argv`. */
export async function processesWith(words: string[]): Promise<string[]> {
  const found: string[] = [];
  for (const pid of await readdir("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    let argv: string[];
    try {
      argv = (await readFile(`/proc/${pid}/cmdline`, "utf8")).split("\0").filter(Boolean);
    } catch {
      continue; // gone meanwhile
    }
    if (words.every((w) => argv.includes(w))) found.push(`${pid}: ${argv.join(" ")}`);
  }
  return found;
}
