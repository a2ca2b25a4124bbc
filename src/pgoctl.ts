/** pgoctl: runs one command of one service on a pgod, over SSH, and exits with its status. */

import type { Readable } from "node:stream";
import type { ClientChannel, ParsedKey, PublicKeyAuthMethod } from "ssh2";
import { UsageError, errorMessage } from "./errors.ts";
import type { HostKey, HostKeyResult } from "./known_hosts.ts";
import { quoteShellWord } from "./shell_words.ts";
import { parseTarget, type Target } from "./target.ts";
import { VERSION } from "./version.ts";

// Only what parsing the command line needs is imported statically: `pgoctl --version` and
// `--help` load nothing else. The SSH client and its crypto are loaded once a command is to run
// (loadClient), from ssh2's client file rather than its index, which would also load its server,
// SFTP, agents and node:http. bench/README.md ("pgoctl's start") has the measurements.

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
  /** `--strict-host-keys`: an unknown host is refused, and known_hosts is never written. */
  strict?: boolean;
  /** `--host-key`: the key (or known_hosts lines) the server must offer; known_hosts is not used. */
  hostKey?: string;
  target: Target;
  args: string[];
}

export type ParsedArgs = { action: "help" } | { action: "version" } | ({ action: "run" } & Invocation);

const SHORT_USAGE =
  "Usage: pgoctl [-i IDENTITY] [-p PORT] [--known-hosts FILE] [--strict-host-keys] [--host-key KEY]\n" +
  "              [--] machine:service//command [args...]";

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
                          host is trusted on first use and recorded here (the file is made
                          when missing, its folder never)
      --strict-host-keys  refuse a host that is not in known_hosts instead of trusting it,
                          and never write known_hosts (also PGOCTL_STRICT_HOST_KEYS=1)
      --host-key KEY      the host key the server must offer, "ssh-ed25519 AAAA..." or a
                          known_hosts line; known_hosts is then not used (also PGOCTL_HOST_KEY)
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
  let strict = false;
  let hostKey: string | undefined;
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
      case "--strict-host-keys":
        if (inline !== undefined) throw new UsageError(`Option "${name}" takes no value`);
        strict = true;
        break;
      case "--host-key":
        hostKey = value(name, inline);
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
  if (strict) inv.strict = true;
  if (hostKey !== undefined) inv.hostKey = hostKey;
  return inv;
}

/** The request text pgod receives: each argument quoted so pgod's shell-word split gives back the exact argv. */
export function requestText(target: Target, args: readonly string[]): string {
  return [`${target.service}//${target.command}`, ...args.map(quoteShellWord)].join(" ");
}

/** Runs pgoctl with `argv` (without argv[0]) and returns its exit status. */
export async function runPgoctl(argv: readonly string[], io: PgoctlIO): Promise<number> {
  let inv: Invocation;
  let policy: HostKeyPolicy;
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
    policy = await hostKeyPolicy(inv, io.env);
  } catch (e) {
    await io.stderr.write(`pgoctl: ${errorMessage(e)}\n${SHORT_USAGE}\n`);
    return EXIT_USAGE;
  }
  let lib: ClientLib;
  let identity: Identity;
  try {
    const pending = loadClient();
    // Read the key while the modules load; a missing key is reported before any of them is needed.
    const text = await identityText(inv.identity, io.env);
    lib = await pending;
    if (policy.mode === "pinned") lib.knownHosts.parseHostKeyText(policy.text, policy.source);
    identity = parseIdentity(lib, text.text, text.source);
  } catch (e) {
    await io.stderr.write(`pgoctl: ${errorMessage(e)}\n`);
    return e instanceof UsageError ? EXIT_USAGE : EXIT_SSH;
  }
  return await runRemote(
    lib,
    {
      host: inv.target.machine,
      port: inv.port,
      user: await localUser(io.env),
      identity,
      policy,
      request: requestText(inv.target, inv.args),
    },
    io,
  );
}

/**
 * How the server's host key is judged: `tofu` (known_hosts; an unknown host is trusted and
 * recorded), `strict` (known_hosts; an unknown host is refused, nothing is written) or `pinned`
 * (the key given on the command line or in PGOCTL_HOST_KEY, and nothing else).
 */
type HostKeyPolicy =
  | { mode: "tofu" | "strict"; knownHosts: string }
  | { mode: "pinned"; text: string; source: string };

/** The host key policy of an invocation; the command line wins over the environment. */
async function hostKeyPolicy(inv: Invocation, env: Record<string, string | undefined>): Promise<HostKeyPolicy> {
  if (inv.hostKey !== undefined) return { mode: "pinned", text: inv.hostKey, source: "--host-key" };
  const pinned = env["PGOCTL_HOST_KEY"];
  if (pinned !== undefined && pinned.trim() !== "") return { mode: "pinned", text: pinned, source: "PGOCTL_HOST_KEY" };
  let strict = inv.strict === true;
  const v = (env["PGOCTL_STRICT_HOST_KEYS"] ?? "").trim().toLowerCase();
  if (["1", "yes", "true"].includes(v)) strict = true;
  else if (!["", "0", "no", "false"].includes(v)) {
    throw new UsageError(`Invalid PGOCTL_STRICT_HOST_KEYS "${env["PGOCTL_STRICT_HOST_KEYS"]}": expected 1 or 0`);
  }
  const home = env["HOME"] || (inv.knownHosts === undefined ? (await import("node:os")).homedir() : "");
  const knownHosts = inv.knownHosts ?? `${home.replace(/\/+$/, "")}/.ssh/known_hosts`;
  return { mode: strict ? "strict" : "tofu", knownHosts };
}

/** The modules that connecting needs, loaded on demand. */
interface ClientLib {
  Client: typeof import("ssh2").Client;
  parseKey: typeof import("ssh2").utils.parseKey;
  knownHosts: typeof import("./known_hosts.ts");
  protocol: typeof import("./ssh_protocol.ts");
}

async function loadClient(): Promise<ClientLib> {
  const [client, keyParser, knownHosts, protocol] = await Promise.all([
    import("ssh2/lib/client.js"),
    import("ssh2/lib/protocol/keyParser.js"),
    import("./known_hosts.ts"),
    import("./ssh_protocol.ts"),
  ]);
  return { Client: client.default, parseKey: keyParser.parseKey, knownHosts, protocol };
}

interface Identity {
  key: ParsedKey;
  fingerprint: string;
}

/** The private key text from `file`, or from PGOCTL_ID. */
async function identityText(
  file: string | undefined,
  env: Record<string, string | undefined>,
): Promise<{ text: string; source: string }> {
  if (file !== undefined) {
    const source = `"${file}"`;
    try {
      return { text: await Bun.file(file).text(), source };
    } catch (e) {
      throw new Error(`Cannot read identity ${source}: ${(e as { code?: string }).code ?? errorMessage(e)}`);
    }
  }
  const v = env["PGOCTL_ID"];
  if (v === undefined || v.trim() === "") {
    throw new UsageError("No identity: give -i FILE or put the private key text in PGOCTL_ID");
  }
  return { text: v, source: "from PGOCTL_ID" };
}

/** Parses the private key once; the SSH client gets the parsed key. */
function parseIdentity(lib: ClientLib, raw: string, source: string): Identity {
  // CI variables often carry CRLF line ends or lose the final newline; neither matters to the key.
  const text = `${raw.replace(/\r\n/g, "\n").trim()}\n`;
  const parsed: unknown = lib.parseKey(text);
  const key = (Array.isArray(parsed) ? parsed[0] : parsed) as ReturnType<typeof lib.parseKey> | undefined;
  if (key === undefined || key instanceof Error) {
    const why = key === undefined ? "no key found" : key.message;
    throw new Error(
      /encrypted|passphrase/i.test(why)
        ? `Cannot use identity ${source}: it is encrypted, and pgoctl needs a key without a passphrase`
        : `Cannot use identity ${source}: ${why}`,
    );
  }
  if (!key.isPrivateKey()) throw new Error(`Cannot use identity ${source}: it is a public key, not a private key`);
  return { key, fingerprint: lib.protocol.fingerprint(key.getPublicSSH()) };
}

/** The SSH user name: the local user's (pgod only logs it). */
async function localUser(env: Record<string, string | undefined>): Promise<string> {
  const u = env["USER"] || env["LOGNAME"];
  if (u) return u;
  try {
    return (await import("node:os")).userInfo().username;
  } catch {
    return "pgoctl";
  }
}

interface Remote {
  host: string;
  port: number;
  user: string;
  identity: Identity;
  policy: HostKeyPolicy;
  request: string;
}

/** Connects, checks the host key, runs the request and streams its output; returns the exit status. */
async function runRemote(lib: ClientLib, r: Remote, io: PgoctlIO): Promise<number> {
  const where = r.host.includes(":") ? `[${r.host}]:${r.port}` : `${r.host}:${r.port}`;
  const conn = new lib.Client();
  const { addHostKey, checkHostKey, hostKeyName, pinnedHostKey } = lib.knownHosts;
  const policy = r.policy;
  const from = policy.mode === "pinned" ? policy.source : `"${policy.knownHosts}"`;
  let hostKeyProblem: string | undefined;
  let loggedIn = false;
  let relaying = false;

  const verifyHost = async (blob: Buffer): Promise<boolean> => {
    const key: HostKey = { host: r.host, port: r.port, algo: lib.protocol.blobType(blob), blob };
    const found: HostKeyResult =
      policy.mode === "pinned" ? pinnedHostKey(policy.text, key) : await checkHostKey(policy.knownHosts, key);
    const fp = `${key.algo} key ${lib.protocol.fingerprint(blob)}`;
    const name = hostKeyName(r.host, r.port);
    switch (found.status) {
      case "known":
        return true;
      case "unknown":
        if (policy.mode === "pinned") {
          hostKeyProblem = `Host key of "${name}" (${fp}) is not the one given in ${policy.source}`;
          return false;
        }
        if (policy.mode === "strict") {
          hostKeyProblem =
            `Host key of "${name}" (${fp}) is not in "${policy.knownHosts}", and strict host key checking is on. ` +
            `Add the host's key there or pass it with --host-key`;
          return false;
        }
        try {
          await addHostKey(policy.knownHosts, key);
          await io.stderr.write(`pgoctl: Trusting "${name}" on first use: added its ${fp} to "${policy.knownHosts}"\n`);
        } catch (e) {
          await io.stderr.write(`pgoctl: Trusting "${name}" on first use (${fp}), but cannot record it in "${policy.knownHosts}": ${errorMessage(e)}\n`);
        }
        return true;
      case "changed":
        if (policy.mode === "pinned") {
          hostKeyProblem = `Host key of "${name}" (${fp}) is not the one given in ${policy.source}`;
          return false;
        }
        hostKeyProblem =
          `Host key of "${name}" has changed: it now offers ${fp}, but "${policy.knownHosts}" line ${found.line} holds another key. ` +
          `This may be an attack. If the change is expected, remove line ${found.line} of "${policy.knownHosts}" ` +
          `(ssh-keygen -R "${name}" -f "${policy.knownHosts}") and try again`;
        return false;
      case "revoked":
        hostKeyProblem = `Host key of "${name}" (${fp}) is marked revoked in ${from} line ${found.line}`;
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

    const publicKeyAuth: PublicKeyAuthMethod = { type: "publickey", username: r.user, key: r.identity.key };
    // Public key only, with the key parsed above: no "none" attempt first (one round trip less)
    // and no second parse of the key inside ssh2.
    conn.connect({
      host: r.host,
      port: r.port,
      username: r.user,
      authHandler: [publicKeyAuth],
      algorithms: lib.protocol.sshAlgorithms(),
      readyTimeout: CONNECT_TIMEOUT_MS,
      keepaliveInterval: 15_000,
      keepaliveCountMax: 3,
      hostVerifier: (blob: Buffer, verify: (ok: boolean) => void): void => {
        verifyHost(blob).then(verify, (e) => {
          hostKeyProblem = `Cannot check the host key of "${where}" in ${from}: ${errorMessage(e)}`;
          verify(false);
        });
      },
    });
    // ssh2 leaves Nagle's algorithm on: our small handshake packets would wait for the server's
    // delayed ACKs (bench/README.md, "OpenSSH's 40 ms").
    conn.setNoDelay(true);
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

/**
 * An Output over this process's stdout or stderr through Bun.write: unlike process.stdout, it
 * loads no Node stream modules (about half of `pgoctl --version`'s own time, bench/README.md).
 * A write rejects with EPIPE once the reader is gone.
 */
export function stdioOutput(fd: 1 | 2): Output {
  const file = fd === 1 ? Bun.stdout : Bun.stderr;
  return {
    async write(chunk: Uint8Array | string): Promise<void> {
      await Bun.write(file, chunk);
    },
  };
}
