/** Typed errors. Messages follow one grammar: sentence case, no trailing period, values quoted. */

/** One problem found in the config file, with where it was found. */
export interface ConfigProblem {
  file: string;
  line: number;
  /** Key path such as `services[1].urls`; empty for problems of the whole file. */
  key: string;
  message: string;
}

/** Formats a config problem as `file:line: key: message`. */
export function formatProblem(p: ConfigProblem): string {
  return `${p.file}:${p.line}: ${p.key ? `${p.key}: ` : ""}${p.message}`;
}

/** The config file is invalid; holds every problem found, not only the first. */
export class ConfigError extends Error {
  override name = "ConfigError";
  readonly problems: ConfigProblem[];
  constructor(problems: ConfigProblem[]) {
    super(
      problems.length === 1
        ? formatProblem(problems[0]!)
        : `Config has ${problems.length} problems:\n${problems.map((p) => `  ${formatProblem(p)}`).join("\n")}`,
    );
    this.problems = problems;
  }
}

/** What CommandError records of a failed child process (execa's fields). */
export interface CommandFailure {
  argv: readonly string[];
  cwd?: string | undefined;
  /** Null when it was killed or never started. */
  exitCode: number | null;
  signal?: string | null;
  timedOut?: boolean;
  /** The end of its stderr (all of it; the message keeps the last lines that say something). */
  stderrTail?: string;
  durationMs?: number;
  /** Says what happened instead of the exit status ("could not start: …"). */
  detail?: string;
}

/** A child process failed: exited non-zero, was killed, timed out or could not start. */
export class CommandError extends Error {
  override name = "CommandError";
  readonly argv: readonly string[];
  readonly cwd: string | undefined;
  readonly exitCode: number | null;
  readonly signal: string | null;
  readonly timedOut: boolean;
  readonly stderrTail: string;
  readonly durationMs: number;
  constructor(f: CommandFailure, options?: ErrorOptions) {
    const timedOut = f.timedOut ?? false;
    const signal = f.signal ?? null;
    const durationMs = f.durationMs ?? 0;
    const stderrTail = f.stderrTail ?? "";
    const what = f.detail ??
      (timedOut ? `timed out after ${durationMs} ms` : signal ? `killed by ${signal}` : `exited with status ${f.exitCode}`);
    const tail = stderrTail.trim();
    super(`Command "${f.argv.slice(0, 3).join(" ")}" failed: ${what}${tail ? `: ${lastLines(tail, 3)}` : ""}`, options);
    this.argv = f.argv;
    this.cwd = f.cwd;
    this.exitCode = f.exitCode;
    this.signal = signal;
    this.timedOut = timedOut;
    this.stderrTail = stderrTail;
    this.durationMs = durationMs;
  }
}

/**
 * A compose file (or a file it pulls in) breaks the sandbox policy or the YAML screen: the commit
 * is refused by design, not because something failed. The screen and the policy throw nothing
 * else on purpose, which the fuzz tests hold them to (an error of another type is a bug there).
 */
export class PolicyError extends Error {
  override name = "PolicyError";
}

/** An encrypted file in the repository cannot be decrypted; `file` is its path in the checkout. */
export class SecretError extends Error {
  override name = "SecretError";
  constructor(readonly file: string, message: string, options?: ErrorOptions) {
    super(message, options);
  }
}

/** Why a rollback cannot be done: the request names no such commit, there is nothing earlier, or the commit may not run. */
export class RollbackError extends Error {
  override name = "RollbackError";
  constructor(readonly reason: "unknown commit" | "nothing earlier" | "unverified", message: string, options?: ErrorOptions) {
    super(message, options);
  }
}

/** sysexits(3) statuses pgod answers a request with. */
export const EX = { usage: 64, dataerr: 65, unavailable: 69, software: 70, tempfail: 75, noperm: 77 } as const;

/** A request over SSH failed; `status` is the exit status to send (0..255). */
export class RequestError extends Error {
  override name = "RequestError";
  constructor(readonly status: number, message: string, options?: ErrorOptions) {
    super(message, options);
  }
}

/** How a failed request is answered: its exit status, the result it is counted as, and whether pgod itself failed. */
export interface Answer {
  status: number;
  result: "denied" | "malformed" | "unavailable" | "error";
  /** True for anything but a refusal of the request: pgod logs it and says "Internal error". */
  internal: boolean;
}

/** The status for each reason a rollback is refused: a bad argument, nothing to go back to, a commit that may not run. */
const ROLLBACK_STATUS = { "unknown commit": EX.usage, "nothing earlier": EX.unavailable, unverified: EX.dataerr } as const;

/**
 * The one place a thrown error becomes an exit status: a RequestError carries its own, a refused
 * rollback has the status of its reason, and anything else (a failing git or engine) is an
 * internal error (70).
 */
export function answerOf(e: unknown): Answer {
  const status = e instanceof RequestError ? e.status : e instanceof RollbackError ? ROLLBACK_STATUS[e.reason] : null;
  if (status === null) return { status: EX.software, result: "error", internal: true };
  const result = status === EX.noperm ? "denied"
    : status === EX.usage ? "malformed"
    : status === EX.unavailable || status === EX.tempfail ? "unavailable"
    : "error";
  return { status, result, internal: false };
}

/** Why files.ts did not read or write a file. */
export type FileProblem =
  | "missing" | "symlink" | "not a regular file" | "too large" | "is a directory" | "not a directory" | "not beneath"
  | "unreadable" | "unwritable";

/**
 * A file that cannot be read or written as asked (files.ts); `path` names it and `why` says why
 * without naming it (`it is larger than 1048576 bytes`), for callers that put it in their own
 * message.
 */
export class FileError extends Error {
  override name = "FileError";
  constructor(
    readonly path: string,
    readonly problem: FileProblem,
    readonly why: string,
    options: ErrorOptions & { op?: "read" | "write"; in?: string } = {},
  ) {
    super(`Cannot ${options.op ?? "read"} "${path}"${options.in !== undefined ? ` in "${options.in}"` : ""}: ${why}`, options);
  }
}

/** The Docker engine's API answered with an error status, or with something pgod cannot use; `status` is its HTTP status. */
export class EngineError extends Error {
  override name = "EngineError";
  constructor(readonly status: number, message: string, options?: ErrorOptions) {
    super(message, options);
  }
}

/** A bad command line. */
export class UsageError extends Error {
  override name = "UsageError";
}

function lastLines(s: string, n: number): string {
  // Blank lines say nothing: they must not push the lines that do out of the tail.
  return s.split("\n").filter((l) => l.trim() !== "").slice(-n).join(" | ");
}

/** The errno code (`ENOENT`, `ELOOP`) of a failed system call, if `e` is one. */
export function errnoCode(e: unknown): string | undefined {
  return typeof e === "object" && e !== null && "code" in e && typeof e.code === "string" ? e.code : undefined;
}

/** The message of anything thrown. */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
