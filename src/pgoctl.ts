/** pgoctl: runs one command of one service on a pgod, over SSH, and exits with its status. */

import { readFile } from "node:fs/promises";
import { homedir, userInfo } from "node:os";
import { join } from "node:path";
import type { Readable, Writable } from "node:stream";
import { Client, utils, type ClientChannel } from "ssh2";
import { UsageError, errorMessage } from "./errors.ts";
import { blobType, fingerprint } from "./keys.ts";
import { addHostKey, checkHostKey, hostKeyName, type HostKey } from "./known_hosts.ts";
import { quoteShellWord } from "./shell_words.ts";
import { sshAlgorithms } from "./ssh_server.ts";
import { parseTarget, type Target } from "./target.ts";
import { VERSION } from "./version.ts";

export { VERSION };

/** Exit status for a bad command line (sysexits EX_USAGE, as pgod uses for a malformed request). */
export const EXIT_USAGE = 64;
/** Exit status for pgoctl's own failures (connection, login, host key), as OpenSSH's ssh uses. */
export const EXIT_SSH = 255;
/** Exit status when stdout is a closed pipe: what a process killed by SIGPIPE reports (128 + 13). */
export const EXIT_PIPE = 141;

/** Default SSH port of pgod. */
export const DEFAULT_PORT = 2222;
/** How long to wait for the connection and the SSH handshake. */
export const CONNECT_TIMEOUT_MS = 15_000;

/** Where output goes; `write` resolves once the chunk is taken and rejects when the reader is gone. */
export interface Output {
  write(chunk: Uint8Array | string): Promise<void>;
}

/** Everything pgoctl touches outside itself. */
export interface PgoctlIO {
  stdout: Output;
  stderr: Output;
  env: Record<string, string | undefined>;
}

/** A parsed command line that runs something. */
export interface Invocation {
  identity?: string;
  port: number;
  knownHosts?: string;
  target: Target;
  args: string[];
}

export type ParsedArgs = { action: "help" } | { action: "version" } | ({ action: "run" } & Invocation);

const SHORT_USAGE = "Usage: pgoctl [-i IDENTITY] [-p PORT] [--known-hosts FILE] [--] machine:service//command [args...]";

/** The text of `pgoctl --help`. */
export const USAGE = `${SHORT_USAGE}
       pgoctl -v | -h

Runs command for service on the pgod at machine over SSH, streams its output and exits with
its exit status. Options go before the target; everything after the target goes to the remote
command unchanged, options included. machine is a name, an IPv4 address or [IPv6].

  -i, --identity FILE     private key, unencrypted OpenSSH or PEM (default: the key text in
                          the environment variable PGOCTL_ID)
  -p, --port PORT         pgod's SSH port (default ${DEFAULT_PORT})
      --known-hosts FILE  host keys, OpenSSH format (default ~/.ssh/known_hosts); an unknown
                          host is trusted on first use and recorded here
  -v, --version           print the version
  -h, --help              print this help

Exit status: the remote command's; ${EXIT_SSH} when connecting, logging in or checking the host
key fails; ${EXIT_USAGE} for a bad command line.
`;

/** Parses pgoctl's command line (without argv[0]); throws UsageError. */
export function parseArgs(argv: readonly string[]): ParsedArgs {
  let identity: string | undefined;
  let port = DEFAULT_PORT;
  let knownHosts: string | undefined;
  let i = 0;
  const value = (name: string, inline: string | undefined): string => {
    if (inline !== undefined) return inline;
    const v = argv[++i];
    if (v === undefined) throw new UsageError(`Option "${name}" needs a value`);
    return v;
  };
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--") {
      i++;
      break;
    }
    if (!a.startsWith("-") || a === "-") break;
    const eq = a.startsWith("--") ? a.indexOf("=") : -1;
    const name = eq > 0 ? a.slice(0, eq) : a.startsWith("--") || a.length === 2 ? a : a.slice(0, 2);
    const inline = eq > 0 ? a.slice(eq + 1) : name !== a ? a.slice(2) : undefined;
    switch (name) {
      case "-h":
      case "--help":
        return { action: "help" };
      case "-v":
      case "--version":
        return { action: "version" };
      case "-i":
      case "--identity":
        identity = value(name, inline);
        break;
      case "-p":
      case "--port": {
        const v = value(name, inline);
        port = Number(v);
        if (!/^\d{1,5}$/.test(v) || port < 1 || port > 65535) throw new UsageError(`Invalid port "${v}": expected 1..65535`);
        break;
      }
      case "--known-hosts":
        knownHosts = value(name, inline);
        break;
      default:
        throw new UsageError(`Unknown option "${a}"`);
    }
  }
  const t = argv[i];
  if (t === undefined) throw new UsageError("Missing target machine:service//command");
  let target: Target;
  try {
    target = parseTarget(t);
  } catch (e) {
    throw new UsageError(errorMessage(e));
  }
  const inv: { action: "run" } & Invocation = { action: "run", port, target, args: argv.slice(i + 1) };
  if (identity !== undefined) inv.identity = identity;
  if (knownHosts !== undefined) inv.knownHosts = knownHosts;
  return inv;
}

/** The request text pgod receives: each argument quoted so pgod's shell-word split gives back the exact argv. */
export function requestText(target: Target, args: readonly string[]): string {
  return [`${target.service}//${target.command}`, ...args.map(quoteShellWord)].join(" ");
}

/** Runs pgoctl with `argv` (without argv[0]) and returns its exit status. */
export async function runPgoctl(argv: readonly string[], io: PgoctlIO): Promise<number> {
  let inv: Invocation;
  try {
    const parsed = parseArgs(argv);
    if (parsed.action === "help") {
      await io.stdout.write(USAGE);
      return 0;
    }
    if (parsed.action === "version") {
      await io.stdout.write(`pgoctl ${VERSION}\n`);
      return 0;
    }
    inv = parsed;
  } catch (e) {
    await io.stderr.write(`pgoctl: ${errorMessage(e)}\n${SHORT_USAGE}\n`);
    return EXIT_USAGE;
  }
  let identity: Identity;
  try {
    identity = await loadIdentity(inv.identity, io.env);
  } catch (e) {
    await io.stderr.write(`pgoctl: ${errorMessage(e)}\n`);
    return e instanceof UsageError ? EXIT_USAGE : EXIT_SSH;
  }
  return await runRemote(
    {
      host: inv.target.machine,
      port: inv.port,
      user: localUser(io.env),
      identity,
      knownHosts: inv.knownHosts ?? join(io.env["HOME"] || homedir(), ".ssh", "known_hosts"),
      request: requestText(inv.target, inv.args),
    },
    io,
  );
}

interface Identity {
  text: string;
  fingerprint: string;
}

/** Loads the private key from `file`, or from the key text in PGOCTL_ID. */
async function loadIdentity(file: string | undefined, env: Record<string, string | undefined>): Promise<Identity> {
  let text: string;
  let source: string;
  if (file !== undefined) {
    source = `"${file}"`;
    try {
      text = await readFile(file, "utf8");
    } catch (e) {
      throw new Error(`Cannot read identity ${source}: ${(e as { code?: string }).code ?? errorMessage(e)}`);
    }
  } else {
    const v = env["PGOCTL_ID"];
    if (v === undefined || v.trim() === "") {
      throw new UsageError("No identity: give -i FILE or put the private key text in PGOCTL_ID");
    }
    source = "from PGOCTL_ID";
    text = v;
  }
  // CI variables often carry CRLF line ends or lose the final newline; neither matters to the key.
  text = `${text.replace(/\r\n/g, "\n").trim()}\n`;
  const parsed: unknown = utils.parseKey(text);
  const key = (Array.isArray(parsed) ? parsed[0] : parsed) as ReturnType<typeof utils.parseKey> | undefined;
  if (key === undefined || key instanceof Error) {
    const why = key === undefined ? "no key found" : key.message;
    throw new Error(
      /encrypted|passphrase/i.test(why)
        ? `Cannot use identity ${source}: it is encrypted, and pgoctl needs a key without a passphrase`
        : `Cannot use identity ${source}: ${why}`,
    );
  }
  if (!key.isPrivateKey()) throw new Error(`Cannot use identity ${source}: it is a public key, not a private key`);
  return { text, fingerprint: fingerprint(key.getPublicSSH()) };
}

/** The SSH user name: the local user's (pgod only logs it). */
function localUser(env: Record<string, string | undefined>): string {
  const u = env["USER"] || env["LOGNAME"];
  if (u) return u;
  try {
    return userInfo().username;
  } catch {
    return "pgoctl";
  }
}

interface Remote {
  host: string;
  port: number;
  user: string;
  identity: Identity;
  knownHosts: string;
  request: string;
}

/** Connects, checks the host key, runs the request and streams its output; returns the exit status. */
async function runRemote(r: Remote, io: PgoctlIO): Promise<number> {
  const where = r.host.includes(":") ? `[${r.host}]:${r.port}` : `${r.host}:${r.port}`;
  const conn = new Client();
  let hostKeyProblem: string | undefined;
  let loggedIn = false;
  let relaying = false;

  const verifyHost = async (blob: Buffer): Promise<boolean> => {
    const key: HostKey = { host: r.host, port: r.port, algo: blobType(blob), blob };
    const found = await checkHostKey(r.knownHosts, key);
    const fp = `${key.algo} key ${fingerprint(blob)}`;
    const name = hostKeyName(r.host, r.port);
    switch (found.status) {
      case "known":
        return true;
      case "unknown":
        try {
          await addHostKey(r.knownHosts, key);
          await io.stderr.write(`pgoctl: Trusting "${name}" on first use: added its ${fp} to "${r.knownHosts}"\n`);
        } catch (e) {
          await io.stderr.write(`pgoctl: Trusting "${name}" on first use (${fp}), but cannot record it in "${r.knownHosts}": ${errorMessage(e)}\n`);
        }
        return true;
      case "changed":
        hostKeyProblem =
          `Host key of "${name}" has changed: it now offers ${fp}, but "${r.knownHosts}" line ${found.line} holds another key. ` +
          `This may be an attack. If the change is expected, remove line ${found.line} of "${r.knownHosts}" ` +
          `(ssh-keygen -R "${name}" -f "${r.knownHosts}") and try again`;
        return false;
      case "revoked":
        hostKeyProblem = `Host key of "${name}" (${fp}) is marked revoked in "${r.knownHosts}" line ${found.line}`;
        return false;
    }
  };

  return await new Promise<number>((resolve) => {
    let settled = false;
    const finish = (status: number, message?: string): void => {
      if (settled) return;
      settled = true;
      conn.end();
      if (message === undefined) resolve(status);
      else io.stderr.write(`pgoctl: ${message}\n`).then(() => resolve(status), () => resolve(status));
    };

    conn.on("error", (err: Error & { level?: string; code?: string }) => {
      if (hostKeyProblem !== undefined) return finish(EXIT_SSH, hostKeyProblem);
      if (err.level === "client-authentication") {
        return finish(EXIT_SSH, `Cannot log in to "${where}" as "${r.user}": the server does not accept key ${r.identity.fingerprint}`);
      }
      if (err.level === "client-timeout") {
        return finish(EXIT_SSH, `Cannot connect to "${where}": no SSH handshake within ${CONNECT_TIMEOUT_MS / 1000} s`);
      }
      if (!loggedIn) return finish(EXIT_SSH, `Cannot connect to "${where}": ${err.message}`);
      finish(EXIT_SSH, `Connection to "${where}" failed: ${err.message}`);
    });
    conn.on("close", () => {
      // With a command running, its channel closes too and relay() reports how it ended.
      if (!relaying) finish(EXIT_SSH, `Connection to "${where}" closed before the command finished`);
    });
    conn.on("ready", () => {
      loggedIn = true;
      conn.exec(r.request, (err, channel) => {
        if (err) return finish(EXIT_SSH, `Cannot run the command on "${where}": ${err.message}`);
        relaying = true;
        relay(channel, io).then(
          (out) => {
            if (out.broken) return finish(EXIT_PIPE);
            if (out.code !== undefined) return finish(out.code);
            if (out.signal !== undefined) return finish(EXIT_SSH, `Remote command killed by signal ${out.signal}`);
            finish(EXIT_SSH, "Remote command ended without an exit status");
          },
          (e) => finish(EXIT_SSH, errorMessage(e)),
        );
      });
    });

    conn.connect({
      host: r.host,
      port: r.port,
      username: r.user,
      privateKey: r.identity.text,
      algorithms: sshAlgorithms(),
      readyTimeout: CONNECT_TIMEOUT_MS,
      keepaliveInterval: 15_000,
      keepaliveCountMax: 3,
      hostVerifier: (blob: Buffer, verify: (ok: boolean) => void): void => {
        verifyHost(blob).then(verify, (e) => {
          hostKeyProblem = `Cannot check the host key of "${where}" in "${r.knownHosts}": ${errorMessage(e)}`;
          verify(false);
        });
      },
    });
  });
}

interface RelayResult {
  code?: number;
  signal?: string;
  /** Local stdout was closed (e.g. `pgoctl ... | head`). */
  broken: boolean;
}

/** Copies the channel's stdout and stderr to ours as they come, one chunk in flight each (backpressure). */
function relay(channel: ClientChannel, io: PgoctlIO): Promise<RelayResult> {
  const result: RelayResult = { broken: false };
  channel.on("exit", (code: number | null, signal?: string) => {
    if (typeof code === "number") result.code = code;
    else if (signal !== undefined) result.signal = signal;
  });
  return new Promise((resolve) => {
    const copy = (from: Readable, to: Output, onBroken: () => void): Promise<void> =>
      new Promise((done) => {
        let dropping = false;
        from.on("data", (chunk: Buffer) => {
          if (dropping) return;
          from.pause();
          to.write(chunk).then(
            () => from.resume(),
            () => {
              // The reader is gone: write no more, but keep draining so the channel can close.
              dropping = true;
              from.resume();
              onBroken();
            },
          );
        });
        from.once("end", () => done());
      });
    const stdoutBroken = (): void => {
      result.broken = true;
      resolve(result);
    };
    const closed = new Promise<void>((done) => channel.once("close", () => done()));
    void Promise.all([copy(channel, io.stdout, stdoutBroken), copy(channel.stderr, io.stderr, () => {}), closed]).then(
      () => resolve(result),
    );
  });
}

/** An Output over a Node stream (process.stdout, process.stderr); write rejects once the reader is gone (EPIPE). */
export function streamOutput(stream: Writable): Output {
  let failed: Error | undefined;
  stream.on("error", (e) => (failed ??= e));
  return {
    write(chunk: Uint8Array | string): Promise<void> {
      if (failed) return Promise.reject(failed);
      return new Promise((resolve, reject) => {
        stream.write(chunk, (err) => (err ? reject(err) : resolve()));
      });
    },
  };
}
