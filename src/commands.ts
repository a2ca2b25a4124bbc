/**
 * The SSH command router: `dispatch(key, request, io) -> exit status`, a plain function with
 * injected dependencies (Hono-style), so tests call it without a network. ssh_server.ts only
 * adapts ssh2 events to it.
 */
import type { Compose } from "./compose.ts";
import { answerOf, EX, RequestError, errorMessage } from "./errors.ts";
import type { PublicKey } from "./keys.ts";
import { formatHistory, readHistory } from "./history.ts";
import { keyAllows, keysEqual } from "./keys.ts";
import type { Logger } from "./log.ts";
import type { LongRunning } from "./long_running.ts";
import type { Hold, ServiceStatus } from "./reconcile.ts";
import type { ClientKey, SessionIO } from "./ssh_session.ts";
import { requestName } from "./ssh_session.ts";
import { parseRequest } from "./target.ts";
import { formatVerdict } from "./verdict.ts";
import type { Verdict } from "./verdict.ts";

/** What the router needs of one service (a ServiceWorker provides it). */
export interface ServiceHandle {
  status(): ServiceStatus;
  exclusive<T>(fn: () => Promise<T>): Promise<T>;
  composeFor(): Promise<Compose>;
  /** Puts the checkout back to exactly the commit that runs (nothing a container wrote stays). */
  restoreNow(): Promise<void>;
  deployNow(trigger: "pgoctl", o: { io: { onStdout?: (c: Uint8Array) => Promise<void>; onStderr?: (c: Uint8Array) => Promise<void>; signal?: AbortSignal }; services?: string[] }): Promise<number>;
  pullNow(io: { onStdout?: (c: Uint8Array) => Promise<void>; onStderr?: (c: Uint8Array) => Promise<void>; signal?: AbortSignal }, services?: string[]): Promise<number>;
  setHold(hold: Hold | null): Promise<void>;
  /** The verdict on the newest commit of the branch (what would deploy next). */
  check(): Promise<Verdict>;
  rollbackTo(rev: string | null, io: { onStdout?: (c: Uint8Array) => Promise<void>; onStderr?: (c: Uint8Array) => Promise<void>; signal?: AbortSignal }): Promise<number>;
  unpin(): Promise<void>;
  syncNow(): Promise<ServiceStatus>;
  /** The stop file's path while it exists (the administrator keeps the service down), else null. */
  stopFileNow(): Promise<string | null>;
  /** The age recipient (`age1…`) the service's encrypted files are made for. */
  recipient(): Promise<string>;
  readonly historyFile: string;
}

export interface RouterDeps {
  services: ReadonlyMap<string, ServiceHandle>;
  /** The keys committed in a service's `ssh/` folder. */
  keysOf(service: string): Promise<PublicKey[]>;
  hostname: string;
  logger: Logger;
  now?: () => number;
  /** Counts a request by command and result. */
  count?: (command: string, result: string) => void;
  /** Caps concurrent `exec` and `logs -f` per service and per key (none when absent). */
  longRunning?: LongRunning;
}

/** The commands pgoctl can run. `load` is the original's name for `check`. */
export const COMMANDS = [
  "up", "down", "stop", "start", "restart", "pull", "ps", "logs", "exec", "ping", "status", "check", "load",
  "history", "rollback", "unpin", "sync", "recipient",
] as const;
type Command = (typeof COMMANDS)[number];

function isCommand(c: string): c is Command {
  return COMMANDS.some((x) => x === c);
}

/** Options each command accepts (everything else is refused), and which of them take a value. */
const OPTIONS: Record<string, { flags: string[]; valued: string[]; services: boolean }> = {
  up: { flags: [], valued: [], services: true },
  down: { flags: ["-v", "--volumes"], valued: ["-t", "--timeout"], services: false },
  stop: { flags: [], valued: ["-t", "--timeout"], services: true },
  start: { flags: [], valued: [], services: true },
  restart: { flags: [], valued: ["-t", "--timeout"], services: true },
  pull: { flags: ["-q", "--quiet"], valued: [], services: true },
  ps: { flags: ["-a", "--all", "-q", "--quiet", "--services"], valued: ["--format", "--status", "--filter"], services: true },
  logs: {
    flags: ["-f", "--follow", "-t", "--timestamps", "--no-color", "--no-log-prefix"],
    valued: ["-n", "--tail", "--since", "--until"],
    services: true,
  },
};

const SERVICE_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
const NO_TIMEOUT_MS = 7 * 24 * 3_600_000;

/** The same reply for an unknown service and a key that is not allowed, so names do not leak. */
function denied(service: string): RequestError {
  return new RequestError(EX.noperm, `Permission denied: this key may not use service "${service}"`);
}

/** Checks a command's arguments against OPTIONS; returns them as docker compose gets them. */
export function checkArgs(command: string, args: readonly string[]): string[] {
  const spec = OPTIONS[command];
  if (!spec) {
    if (args.length > 0) throw new RequestError(EX.usage, `Command "${command}" takes no arguments`);
    return [];
  }
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const eq = a.indexOf("=");
    const name = a.startsWith("--") && eq > 0 ? a.slice(0, eq) : a;
    if (spec.flags.includes(a)) out.push(a);
    else if (spec.valued.includes(name)) {
      const v = name !== a ? a.slice(eq + 1) : args[++i];
      if (v === undefined) throw new RequestError(EX.usage, `Option "${a}" of "${command}" needs a value`);
      if ((name === "-t" || name === "--timeout") && !/^[0-9]{1,6}$/.test(v)) {
        throw new RequestError(EX.usage, `Invalid value "${v}" for "${name}" of "${command}": expected whole seconds`);
      }
      if (name !== a) out.push(a);
      else out.push(a, v);
    } else if (a.startsWith("-")) {
      throw new RequestError(EX.usage, `Option "${a}" is not allowed for "${command}"`);
    } else if (spec.services && SERVICE_NAME.test(a)) out.push(a);
    else throw new RequestError(EX.usage, `Invalid argument "${a}" for "${command}": expected a compose service name`);
  }
  return out;
}

/** Runs one request and returns its exit status; the reason for a failure goes to stderr. */
export async function dispatch(key: ClientKey, request: string, io: SessionIO, d: RouterDeps): Promise<number> {
  const now = d.now ?? Date.now;
  const started = now();
  let command = "malformed";
  let service = "";
  let status: number;
  let result: string;
  try {
    const parse = (text: string, what: string) => {
      try {
        return parseRequest(text);
      } catch (e) {
        throw new RequestError(EX.usage, `Malformed ${what}: ${errorMessage(e)}; expected "service//command [args...]"`);
      }
    };
    let req = parse(request, "request");
    service = req.service;
    command = isCommand(req.command) ? req.command : "unknown";
    const handle = d.services.get(req.service);
    // The key's lines in this service's ssh/ folder that let this client in (from=, expiry-time).
    const lines = handle ? (await d.keysOf(req.service)).filter((k) => keysEqual(k, key) && keyAllows(k, { ip: key.ip ?? "", now: now() })) : [];
    if (!handle || lines.length === 0) throw denied(req.service);
    // command="..." runs instead of what was asked, unless another line of the key has none.
    const commands = lines.map((k) => k.options?.command);
    const forced = commands.every((c) => c !== undefined) ? commands[0] ?? null : null;
    if (forced !== null) {
      req = parse(forced.includes("//") ? forced : `${req.service}//${forced}`, 'command="..." of the key');
      if (req.service !== service) throw new RequestError(EX.noperm, `Permission denied: the key's command="..." names another service`);
      d.logger.info("running the key's forced command", { service, key: key.fingerprint, asked: requestName(request) });
    }
    const cmd = req.command;
    if (!isCommand(cmd)) {
      command = "unknown";
      throw new RequestError(EX.usage, `Unknown command "${cmd}": expected one of ${COMMANDS.filter((c) => c !== "load").join(", ")}`);
    }
    command = cmd;
    status = await run(cmd, req.args, handle, io, d, { service, key: key.fingerprint });
    result = status === 0 ? "ok" : "error";
  } catch (e) {
    // A refused request (RequestError, RollbackError) gets its own status; a failing git or
    // engine is an internal error like any other (errors.ts answerOf).
    const a = answerOf(e);
    status = a.status;
    result = a.result;
    if (a.internal) d.logger.error("request failed", { service, command, error: errorMessage(e) });
    await io.stderr.write(`${a.internal ? "Internal error: " : ""}${errorMessage(e)}\n`).catch(() => {});
  }
  d.count?.(command, result);
  d.logger.debug("request routed", { service, command, result, ms: now() - started });
  return status;
}

/** One routed request, as its command's handler gets it. */
interface Call {
  cmd: Command;
  args: string[];
  h: ServiceHandle;
  io: SessionIO;
  d: RouterDeps;
  who: { service: string; key: string };
  /** The session's output and abort signal, as compose and the service handle take them. */
  out: { onStdout: (c: Uint8Array) => Promise<void>; onStderr: (c: Uint8Array) => Promise<void>; signal: AbortSignal };
}

type Handler = (c: Call) => Promise<number>;

function run(
  cmd: Command,
  args: string[],
  h: ServiceHandle,
  io: SessionIO,
  d: RouterDeps,
  who: { service: string; key: string },
): Promise<number> {
  const out = { onStdout: (c: Uint8Array) => io.stdout.write(c), onStderr: (c: Uint8Array) => io.stderr.write(c), signal: io.signal };
  return HANDLERS[cmd]({ cmd, args, h, io, d, who, out });
}

/** One handler per command. */
const HANDLERS: Record<Command, Handler> = {
  ping: runPing,
  recipient: runRecipient,
  status: runStatus,
  check: runCheck,
  load: runCheck,
  exec: runExec,
  ps: runComposeRead,
  logs: runComposeRead,
  history: runHistory,
  rollback: runRollback,
  unpin: runUnpin,
  sync: runSync,
  up: runUp,
  pull: runPull,
  down: runLifecycle,
  stop: runLifecycle,
  start: runLifecycle,
  restart: runLifecycle,
};

async function runPing({ cmd, args, io, d }: Call): Promise<number> {
  checkArgs(cmd, args);
  await io.stdout.write(`pong ${d.hostname}\n`);
  return 0;
}

async function runRecipient({ cmd, args, h, io }: Call): Promise<number> {
  checkArgs(cmd, args);
  await io.stdout.write(`${await h.recipient()}\n`);
  return 0;
}

async function runStatus({ cmd, args, h, io, d }: Call): Promise<number> {
  checkArgs(cmd, args);
  await io.stdout.write(formatStatus(h.status(), d.now ?? Date.now));
  return 0;
}

/** check (and its old name load): the verdict on the newest commit; 1 when it would be refused. */
async function runCheck({ cmd, args, h, io }: Call): Promise<number> {
  checkArgs(cmd, args);
  ready(h);
  const verdict = await h.check();
  if (verdict.stale) await io.stderr.write(`Cannot fetch branch "${verdict.branch}": ${verdict.stale}; judged the last fetched commit\n`);
  await io.stdout.write(formatVerdict(verdict));
  return verdict.refusal === null ? 0 : 1;
}

async function runExec({ args, h, io, d, who, out }: Call): Promise<number> {
  const [container, ...rest] = args;
  if (container === undefined || rest.length === 0) throw new RequestError(EX.usage, 'Usage: "exec <container> <command> [args...]"');
  if (!SERVICE_NAME.test(container)) throw new RequestError(EX.usage, `Invalid container "${container}": expected a compose service name`);
  ready(h);
  const release = await d.longRunning?.take(who.service, who.key, "exec", io.signal);
  try {
    const c = await h.composeFor();
    return (await c.run(["exec", "-T", container, ...rest], { ...out, timeoutMs: NO_TIMEOUT_MS })).exitCode;
  } finally {
    release?.();
  }
}

/** ps and logs: passed to compose; `logs -f` counts as long-running. */
async function runComposeRead({ cmd, args, h, io, d, who, out }: Call): Promise<number> {
  const a = checkArgs(cmd, args);
  ready(h);
  const follows = cmd === "logs" && a.some((x) => x === "-f" || x === "--follow");
  const release = follows ? await d.longRunning?.take(who.service, who.key, "logs -f", io.signal) : undefined;
  try {
    const c = await h.composeFor();
    return (await c.run([cmd, ...a], { ...out, timeoutMs: NO_TIMEOUT_MS })).exitCode;
  } finally {
    release?.();
  }
}

async function runHistory({ args, h, io }: Call): Promise<number> {
  if (args.length > 1 || (args[0] !== undefined && !/^[1-9][0-9]{0,3}$/.test(args[0]))) {
    throw new RequestError(EX.usage, 'Usage: "history [N]" with N from 1 to 9999');
  }
  await io.stdout.write(formatHistory(await readHistory(h.historyFile), Number(args[0] ?? 20)) || "no deploys yet\n");
  return 0;
}

async function runRollback({ cmd, args, h, out }: Call): Promise<number> {
  if (args.length > 1 || (args[0] !== undefined && !/^[0-9a-f]{4,64}$/.test(args[0]))) {
    throw new RequestError(EX.usage, 'Usage: "rollback [commit]" with a commit id (or a prefix of at least 4 hex digits)');
  }
  ready(h);
  await notStopped(h, cmd);
  return h.exclusive(async () => {
    await notStopped(h, cmd);
    return h.rollbackTo(args[0] ?? null, out);
  });
}

async function runUnpin({ cmd, args, h, io }: Call): Promise<number> {
  checkArgs(cmd, args);
  ready(h);
  await h.unpin();
  await io.stdout.write("unpinned: new commits are pulled again\n");
  return 0;
}

async function runSync({ cmd, args, h, io }: Call): Promise<number> {
  checkArgs(cmd, args);
  ready(h);
  const s = await h.syncNow();
  if (s.pinned) {
    await io.stdout.write(`pinned at ${s.pinned.slice(0, 12)}: "unpin" first to pull new commits\n`);
    return 0;
  }
  await io.stdout.write(`at ${s.commit?.slice(0, 12) ?? "nothing"}: ${s.lastResult ?? "not deployed"}\n`);
  if (s.lastError) await io.stderr.write(`${s.lastError}\n`);
  return s.lastError ? 1 : 0;
}

async function runUp({ cmd, args, h, out }: Call): Promise<number> {
  const a = checkArgs(cmd, args);
  ready(h);
  await notStopped(h, cmd);
  return h.exclusive(async () => {
    await notStopped(h, cmd);
    await h.setHold(null);
    return h.deployNow("pgoctl", { io: out, services: a });
  });
}

async function runPull({ cmd, args, h, out }: Call): Promise<number> {
  const a = checkArgs(cmd, args).filter((x) => x !== "-q" && x !== "--quiet");
  ready(h);
  return h.exclusive(() => h.pullNow(out, a));
}

/** down, stop, start and restart: compose under the service's lock, then the hold they leave. */
async function runLifecycle({ cmd, args, h, out }: Call): Promise<number> {
  const a = checkArgs(cmd, args);
  ready(h);
  const bringsUp = cmd === "start" || cmd === "restart";
  const hold: Hold | null = cmd === "down" || cmd === "stop" ? cmd : null;
  if (bringsUp) await notStopped(h, cmd);
  return h.exclusive(async () => {
    if (bringsUp) await notStopped(h, cmd);
    // start and restart read the compose model again: from the judged commit's bytes only.
    if (bringsUp) await h.restoreNow();
    const c = await h.composeFor();
    const extra = cmd === "down" ? ["--remove-orphans"] : [];
    const code = (await c.run([cmd, ...extra, ...a], out)).exitCode;
    // A hold only for what happened: a refused stop (unknown service, bad -t) holds nothing.
    // The lock keeps the reconcile loop out between the command and the hold.
    if (code === 0) await h.setHold(hold);
    return code;
  });
}

/** Refuses a command that would bring the service up while the stop file exists (69). */
async function notStopped(h: ServiceHandle, cmd: string): Promise<void> {
  const file = await h.stopFileNow();
  if (file !== null) {
    throw new RequestError(EX.unavailable, `Cannot ${cmd} "${h.status().name}": the stop file "${file}" exists; the administrator must remove it first`);
  }
}

/** 69 until the service has a checkout. */
function ready(h: ServiceHandle): void {
  if (h.status().commit === null) throw new RequestError(EX.unavailable, "Service not ready: its repository is not cloned yet");
}

/** The text `status` prints. */
export function formatStatus(s: ServiceStatus, now: () => number): string {
  const t = (ms: number | null): string => (ms === null ? "never" : new Date(ms).toISOString());
  const lines = [
    `service:     ${s.name}`,
    `commit:      ${s.commit ?? "none (not cloned yet)"}`,
    `deployed:    ${t(s.deployedAt)}`,
    `last result: ${s.lastResult ?? "none"}`,
    `hold:        ${s.hold ? `${s.hold} (through pgoctl; "up", "start" or "restart" releases it)` : "none"}`,
    `pinned:      ${s.pinned ? `${s.pinned} (no new commits are pulled; "unpin" releases it)` : "no"}`,
    `last good:   ${s.good ?? "none"}`,
    `rolled back: ${s.bad ? `${s.bad} (not tried again until a newer commit arrives)` : "none"}`,
    `refused:     ${s.refused ? `${s.refused.commit} (not deployed; what runs keeps running)` : "none"}`,
    ...(s.refused ? [`refusal:     ${s.refused.reason.split("\n").join("\n             ")}`] : []),
    ...(s.unverified !== undefined ? [`unverified:  ${s.unverified} (not deployed; what runs keeps running)`] : []),
    `stop file:   ${s.stopFile ? "present (the service is kept down)" : "absent"}`,
    `last poll:   ${t(s.lastPollAt)}`,
    `next poll:   ${s.nextPollAt === null ? "now" : `${t(s.nextPollAt)} (in ${Math.max(0, Math.round((s.nextPollAt - now()) / 1000))}s)`}`,
    `last error:  ${s.lastError ?? "none"}`,
  ];
  return lines.join("\n") + "\n";
}
