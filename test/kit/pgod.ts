/**
 * A running pgod for the e2e and reliability tests and the benchmark: its config, its log (read
 * as it grows), the addresses it listens on, signals and stop. No bun:test here.
 */
import { closeSync, fstatSync, openSync, readFileSync, readSync, rmdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { GiveUp, waitFor } from "./wait.ts";
import type { WaitOptions } from "./wait.ts";

/** The daemon under test: `PGOD_BIN`, else the one `bash scripts/build.sh` makes. */
export const PGOD: string = process.env["PGOD_BIN"] || resolve(import.meta.dir, "../../dist/pgod");
/** The client under test: `PGOCTL_BIN`, else the one `bash scripts/build.sh` makes. */
export const PGOCTL: string = process.env["PGOCTL_BIN"] || resolve(import.meta.dir, "../../dist/pgoctl");

/** One `[[services]]` table of a config. */
export interface ServiceSpec {
  name: string;
  user?: string;
  repository: string;
  /** Extra TOML lines for the table. */
  extra?: string;
}

/** The TOML text of a config with `services`. */
export function configText(services: ServiceSpec[]): string {
  return services
    .map((s) => `[[services]]\nname = "${s.name}"\nuser = "${s.user ?? "root"}"\nrepository = "${s.repository}"\n${s.extra ?? ""}`)
    .join("\n");
}

/** How to start pgod. */
export interface PgodOptions {
  config: string;
  dir: string;
  datadir: string;
  /** pgod's stdout and stderr are appended here. */
  logFile: string;
  /** `-t` (default "2s"). */
  interval?: string;
  /** The whole environment (default: this process's). */
  env?: Record<string, string | undefined>;
  /** `-s` (default "127.0.0.1:0"). */
  ssh?: string;
  /** More arguments, after the others (a later `-t` wins). */
  args?: string[];
  /** The command that runs pgod (default: [PGOD]), e.g. bun on src/cmd/pgod.ts. */
  command?: string[];
  /** A command that runs pgod as its child, e.g. `perf stat ... --`. */
  wrapper?: string[];
}

/** The argv that starts pgod with `--debug` and loopback servers (port 0 unless `ssh` says). */
export function pgodArgv(o: PgodOptions): string[] {
  return [
    ...(o.wrapper ?? []), ...(o.command ?? [PGOD]),
    "-c", o.config, "-d", o.dir, "--datadir", o.datadir, "-t", o.interval ?? "2s", "--debug",
    "-s", o.ssh ?? "127.0.0.1:0", "-m", "127.0.0.1:0", ...(o.args ?? []),
  ];
}

/** A running (or finished) pgod process with its log. */
export class Pgod {
  exitCode: number | null = null;
  readonly exited: Promise<number>;
  /** pgod's own pid: under a wrapper, set it to the wrapper's child (`proc` is the wrapper). */
  pid: number;
  private text = "";
  private readOffset = 0;
  private readonly decoder = new TextDecoder();

  constructor(
    readonly proc: ReturnType<typeof Bun.spawn>,
    readonly logFile: string,
    /** performance.now() and Date.now() just before the spawn. */
    readonly startedAt: number = performance.now(),
    readonly startedWall: number = Date.now(),
  ) {
    this.pid = proc.pid;
    this.exited = proc.exited.then((c) => (this.exitCode = c));
  }

  /** Starts pgod (see `pgodArgv`); its stdout and stderr go to `o.logFile`. A subclass's `start` makes one of its own. */
  static start<T extends Pgod>(this: new (proc: ReturnType<typeof Bun.spawn>, logFile: string, startedAt: number, startedWall: number) => T, o: PgodOptions): T {
    const fd = openSync(o.logFile, "a");
    const startedWall = Date.now();
    const startedAt = performance.now();
    try {
      const proc = Bun.spawn(pgodArgv(o), { cwd: "/", env: o.env ?? process.env, stdin: "ignore", stdout: fd, stderr: fd });
      return new this(proc, o.logFile, startedAt, startedWall);
    } finally {
      closeSync(fd);
    }
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
      const size = fstatSync(fd).size;
      if (size > this.readOffset) {
        const buf = Buffer.alloc(size - this.readOffset);
        const n = readSync(fd, buf, 0, buf.length, this.readOffset);
        this.text += this.decoder.decode(buf.subarray(0, n), { stream: true });
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

  /** Lines of the log matching `re`, from character `since` of the log on (and before `until`). */
  lines(re: RegExp, since = 0, until?: number): string[] {
    return this.log().slice(since, until).split("\n").filter((l) => re.test(l));
  }

  /**
   * Waits until at least `count` log lines (after character `since`) match `re`; returns them.
   * Fails at once when pgod has exited without them.
   */
  async waitForLog(re: RegExp, o: WaitOptions & { count?: number; since?: number } = {}): Promise<string[]> {
    const count = o.count ?? 1;
    return waitFor(
      `${count} log line(s) matching ${re} in ${this.logFile}`,
      () => {
        const ls = this.lines(re, o.since);
        if (ls.length < count && this.exitCode !== null) throw new GiveUp(`pgod exited with ${this.exitCode}`);
        return ls;
      },
      (ls) => ls.length >= count,
      { intervalMs: 50, ...o },
    ).catch((e: Error) => {
      throw new Error(`${e.message}\nlog tail:\n${this.log().split("\n").slice(-20).join("\n")}`);
    });
  }

  /** Where the SSH server listens and which host key it shows, from the log. */
  async sshListening(timeoutMs = 30_000): Promise<{ port: number; hostKey: string }> {
    const [line] = await this.waitForLog(/msg="SSH server listening" .*port=\d+ host_key=SHA256:/, { timeoutMs });
    const m = /port=(\d+) host_key=(SHA256:\S+)/.exec(line!)!;
    return { port: Number(m[1]), hostKey: m[2]! };
  }

  /** `host:port` of the server `which` ("metrics" or "webhook"), from the log. */
  async address(which: "metrics" | "webhook", timeoutMs = 30_000): Promise<string> {
    const [line] = await this.waitForLog(new RegExp(`msg="${which} server listening" address=\\S+`), { timeoutMs });
    return /address=(\S+)/.exec(line!)![1]!;
  }

  /** Sends `sig` to pgod and waits (at most `ms`) for the exit status; null when it did not exit. */
  async signal(sig: NodeJS.Signals, ms = 20_000): Promise<number | null> {
    if (this.exitCode === null) kill(this.pid === this.proc.pid ? this.proc : this.pid, sig);
    return this.exitedWithin(ms);
  }

  /** The exit status once pgod exits, or null when it is still running after `ms`. */
  exitedWithin(ms: number): Promise<number | null> {
    return Promise.race([this.exited, Bun.sleep(ms).then(() => null)]);
  }

  /** Ends pgod: SIGTERM, then SIGKILL (also to a wrapper) if it does not go within `graceMs`. */
  async stop(graceMs = 20_000): Promise<void> {
    if (this.exitCode !== null) return;
    if ((await this.signal("SIGTERM", graceMs)) === null) {
      kill(this.pid, "SIGKILL");
      this.proc.kill("SIGKILL");
      await this.exited;
      removeComposeCgroup(this.pid);
    }
  }
}

/** Signals a child (by its handle) or a pid; a process that is gone is no error. */
function kill(p: number | ReturnType<typeof Bun.spawn>, sig: NodeJS.Signals): void {
  try {
    if (typeof p === "number") process.kill(p, sig);
    else p.kill(sig);
  } catch {
    // gone
  }
}

/** The time (ms) of a log line, from its leading ISO timestamp. */
export function timeOf(line: string): number {
  const t = Date.parse(line.split(" ", 1)[0] ?? "");
  if (!Number.isFinite(t)) throw new Error(`Log line without a timestamp: ${line}`);
  return t;
}

/**
 * Removes the memory cgroup `compose-<pid>` that a pgod killed with SIGKILL could not remove
 * itself (pgod makes it beside its own cgroup, which is the caller's). Best effort.
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
