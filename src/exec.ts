/**
 * The one place that starts processes. Every child gets an explicit, minimal environment, a
 * timeout, an abort signal, its own process group (so a timeout or an abort ends the whole
 * tree), and, when it runs as a service user, that user's uid, gid and supplementary groups.
 */
import { CommandError } from "./errors.ts";
import type { Logger } from "./log.ts";

/** A Unix identity to run a child as. */
export interface Identity {
  uid: number;
  gid: number;
  /** Supplementary groups, set exactly (never inherited from pgod). */
  groups: number[];
}

/** Labels for metrics; bounded values only, never raw arguments. */
export interface Tag {
  service: string;
  cmd: string;
  subcmd: string;
}

export interface RunOptions {
  cwd?: string;
  /** The whole environment of the child; nothing is inherited. */
  env: Record<string, string>;
  as?: Identity;
  timeoutMs?: number;
  signal?: AbortSignal;
  stdin?: string;
  /** Stream stdout here instead of collecting it; awaited per chunk (backpressure). */
  onStdout?: (chunk: Uint8Array) => Promise<void> | void;
  onStderr?: (chunk: Uint8Array) => Promise<void> | void;
  /** Throw a CommandError on a non-zero exit (default true). */
  check?: boolean;
  /**
   * Start the child inside this cgroup directory (memory limits), or inside each of these (cgroup
   * v1 keeps memory and pids in separate hierarchies).
   */
  cgroup?: string | readonly string[];
  tag?: Tag;
  /** Names of env variables whose values are secret; only names are ever logged anyway. */
  quiet?: boolean;
}

export interface RunResult {
  exitCode: number;
  signal: string | null;
  stdout: string;
  stderr: string;
  durationMs: number;
  timedOut: boolean;
}

/** Runs a command; injected everywhere so tests can replace it. */
export type Runner = (argv: readonly string[], opts: RunOptions) => Promise<RunResult>;

/** Observes every finished command, for metrics. */
export type CommandObserver = (tag: Tag, ok: boolean) => void;

const MAX_COLLECT = 8 * 1024 * 1024;
const DEFAULT_TIMEOUT_MS = 10 * 60_000;
const KILL_GRACE_MS = 5_000;

/** Where setpriv lives; it sets uid, gid and the exact supplementary groups before exec. */
export const SETPRIV = "/usr/bin/setpriv";

/** The argv that runs `argv` as `id`: setpriv sets the groups Bun.spawn cannot. */
export function asUserArgv(argv: readonly string[], id: Identity): string[] {
  const groups = id.groups.length > 0 ? id.groups.join(",") : String(id.gid);
  return [SETPRIV, `--reuid=${id.uid}`, `--regid=${id.gid}`, `--groups=${groups}`, "--", ...argv];
}

export interface RunnerOptions {
  logger: Logger;
  observe?: CommandObserver;
  /**
   * The docker compose plugin, run directly for `docker compose ...` when `path` is set (read at
   * each call): the docker CLI in front of it costs about a quarter of a second a call, most of it
   * asking every plugin for its metadata. Logs and errors still say `docker compose`.
   */
  composePlugin?: { path: string | null };
}

/** Makes the real runner, based on Bun.spawn. */
export function makeRunner(ro: RunnerOptions): Runner {
  return async (argv, opts) => {
    const started = performance.now();
    const plugin = ro.composePlugin?.path;
    const direct = plugin && argv[0] === "docker" && argv[1] === "compose" ? [plugin, ...argv.slice(2)] : argv;
    const [cgroup, ...moreCgroups] = typeof opts.cgroup === "string" ? [opts.cgroup] : opts.cgroup ?? [];
    const user = opts.as && opts.as.uid !== 0 ? asUserArgv(direct, opts.as) : [...direct];
    const full = moreCgroups.length > 0 ? joinCgroupsArgv(moreCgroups, user) : user;
    if (ro.logger.debugEnabled) {
      ro.logger.debug("exec", {
        argv: redactArgv(argv).join(" "),
        cwd: opts.cwd,
        uid: opts.as?.uid ?? process.getuid?.(),
        groups: opts.as?.groups.join(","),
        env: Object.keys(opts.env).join(","),
      });
    }
    const fail = (exitCode: number | null, signal: string | null, timedOut: boolean, stderr: string, detail?: string): never => {
      if (opts.tag) ro.observe?.(opts.tag, false);
      throw new CommandError({
        argv, cwd: opts.cwd, exitCode, signal, timedOut, stderrTail: stderr, durationMs: Math.round(performance.now() - started),
        ...(detail !== undefined ? { detail } : {}),
      });
    };
    if (opts.signal?.aborted) fail(null, null, false, "", "aborted before it started");
    let proc: ReturnType<typeof Bun.spawn<"pipe", "pipe", "pipe">>;
    try {
      proc = Bun.spawn(full, {
        cwd: opts.cwd ?? "/",
        env: opts.env,
        stdin: opts.stdin === undefined ? "ignore" : "pipe",
        stdout: "pipe",
        stderr: "pipe",
        detached: true,
        ...(cgroup ? { cgroup } : {}),
      }) as unknown as ReturnType<typeof Bun.spawn<"pipe", "pipe", "pipe">>;
    } catch (e) {
      // Bun throws synchronously when the executable is missing or cwd does not exist.
      return fail(null, null, false, "", `could not start: ${e instanceof Error ? e.message : String(e)}`);
    }
    if (opts.stdin !== undefined) {
      const w = proc.stdin as unknown as { write(s: string): void; end(): void };
      w.write(opts.stdin);
      w.end();
    }
    let timedOut = false as boolean;
    let killTimer: ReturnType<typeof setTimeout> | undefined;
    const killGroup = (): void => {
      const kill = (sig: NodeJS.Signals): void => {
        try {
          process.kill(-proc.pid, sig);
        } catch {
          // The group is already gone.
        }
      };
      kill("SIGTERM");
      killTimer ??= setTimeout(() => kill("SIGKILL"), KILL_GRACE_MS);
    };
    const timeout = setTimeout(() => {
      timedOut = true;
      killGroup();
    }, opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    const onAbort = (): void => killGroup();
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    const [stdout, stderr] = await Promise.all([
      drain(proc.stdout, opts.onStdout),
      drain(proc.stderr, opts.onStderr),
    ]);
    const exitCode = await proc.exited;
    clearTimeout(timeout);
    if (killTimer) clearTimeout(killTimer);
    opts.signal?.removeEventListener("abort", onAbort);
    const signal = proc.signalCode == null ? null : String(proc.signalCode);
    const durationMs = Math.round(performance.now() - started);
    if ((opts.check ?? true) && (exitCode !== 0 || timedOut)) {
      fail(exitCode, signal, timedOut, stderr);
    }
    if (opts.tag) ro.observe?.(opts.tag, exitCode === 0);
    return { exitCode: exitCode ?? 128, signal, stdout, stderr, durationMs, timedOut };
  };
}

/**
 * The argv that moves itself into each of `dirs` and then runs `argv`: Bun.spawn joins one cgroup
 * only. The shell runs as root (before setpriv drops to the service user) and execs, so the
 * command and everything it starts stay in those cgroups; a failed join runs nothing (exit 125).
 */
export function joinCgroupsArgv(dirs: readonly string[], argv: readonly string[]): string[] {
  const script = 'for d do [ "$d" = -- ] && break; echo $$ > "$d/cgroup.procs" || exit 125; shift; done; shift; exec "$@"';
  return ["/bin/sh", "-c", script, "pgo-cgroup", ...dirs, "--", ...argv];
}

async function drain(
  stream: ReadableStream<Uint8Array>,
  sink?: (chunk: Uint8Array) => Promise<void> | void,
): Promise<string> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = stream.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (sink) {
      await sink(value);
      continue;
    }
    if (size < MAX_COLLECT) {
      chunks.push(value);
      size += value.byteLength;
    }
  }
  return Buffer.concat(chunks).toString("utf8");
}

/** Drops argv elements that may carry secrets (`docker login -p`, URLs with credentials). */
export function redactArgv(argv: readonly string[]): string[] {
  return argv.map((a, i) => {
    if (i > 0 && (argv[i - 1] === "-p" || argv[i - 1] === "--password")) return "***";
    return a.replace(/\/\/[^/@\s]+@/g, "//***@");
  });
}
