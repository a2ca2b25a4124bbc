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

/** A child process failed: exited non-zero, was killed, timed out or could not start. */
export class CommandError extends Error {
  override name = "CommandError";
  constructor(
    readonly argv: readonly string[],
    readonly cwd: string | undefined,
    readonly exitCode: number | null,
    readonly signal: string | null,
    readonly timedOut: boolean,
    readonly stderrTail: string,
    readonly durationMs: number,
    detail?: string,
  ) {
    const what = detail ??
      (timedOut
        ? `timed out after ${durationMs} ms`
        : signal
        ? `killed by ${signal}`
        : `exited with status ${exitCode}`);
    const tail = stderrTail.trim();
    super(`Command "${argv.slice(0, 3).join(" ")}" failed: ${what}${tail ? `: ${lastLines(tail, 3)}` : ""}`);
  }
}

/** A compose file breaks the sandbox policy. */
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
  constructor(readonly reason: "unknown commit" | "nothing earlier" | "unverified", message: string) {
    super(message);
  }
}

/** A request over SSH failed; `status` is the exit status to send (0..255). */
export class RequestError extends Error {
  override name = "RequestError";
  constructor(readonly status: number, message: string) {
    super(message);
  }
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
