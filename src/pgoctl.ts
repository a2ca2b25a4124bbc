/** pgoctl: runs one command of one service on a pgod, over SSH, and exits with its status. */
// About 500 lines, on purpose: one run of pgoctl with its two SSH paths (its own client and the
// ssh2 fallback), which must share one host-key judgement and one output relay; the command line
// is in pgoctl_args.ts.

import type { Readable } from "node:stream";
import type { ClientChannel, ParsedKey, PublicKeyAuthMethod } from "ssh2";
import { UsageError, errorMessage } from "./errors.ts";
import type { HostKey, HostKeyResult } from "./known_hosts.ts";
import type { Ed25519Identity } from "./ssh_wire.ts";
import { VERSION } from "./version.ts";

// Only what parsing the command line needs is imported statically: `pgoctl --version` and
// `--help` load nothing else. A command runs on pgoctl's own SSH client (ssh_client.ts: an
// Ed25519 key, curve25519, an ed25519 host key, AES-GCM, on Bun's native crypto), loaded once a
// command is to run (loadFast). Anything it does not do (another kind of key, a server without
// those algorithms) goes to ssh2 (loadClient), loaded from its client file rather than its
// index, which would also load its server, SFTP, agents and node:http. bench/README.md
// ("Whole-process clients") has the measurements.

export { VERSION };
import { EXIT_PIPE, EXIT_SSH, EXIT_USAGE, parseArgs, requestText, SHORT_USAGE, USAGE, type Invocation } from "./pgoctl_args.ts";
export { DEFAULT_PORT, EXIT_PIPE, EXIT_SSH, EXIT_USAGE, parseArgs, requestText, USAGE, type Invocation, type ParsedArgs } from "./pgoctl_args.ts";

/**
 * pgoctl is built with JavaScriptCore's tier-up thresholds raised (scripts/build.sh,
 * --compile-jit-policy): a ping runs each function a few times, and compiling them cost more
 * CPU than it saved (bench/README.md). A command with a lot of output is another matter: past
 * this much, the normal policy comes back.
 */
const WARM_UP_BYTES = 1024 * 1024;
let relayed = 0;

/** Counts output relayed; past WARM_UP_BYTES, restores the normal JIT policy (once). */
function warmUp(bytes: number): void {
  if (relayed > WARM_UP_BYTES) return;
  relayed += bytes;
  if (relayed > WARM_UP_BYTES) Bun.unsafe.setJITPolicy(1);
}

/** How long to wait for the connection and the SSH handshake. */
export const CONNECT_TIMEOUT_MS = 15_000;
/** With nothing heard from the server for this long, ask whether it is still there... */
const KEEPALIVE_MS = 15_000;
/** ...and give up after this many unanswered asks. */
const KEEPALIVE_COUNT_MAX = 3;

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
  let fast: FastLib;
  let text: { text: string; source: string };
  try {
    const pending = loadFast();
    // Read the key while the modules load; a missing key is reported before any of them is needed.
    text = await identityText(inv.identity, io.env);
    fast = await pending;
    if (policy.mode === "pinned") fast.knownHosts.parseHostKeyText(policy.text, policy.source);
  } catch (e) {
    await io.stderr.write(`pgoctl: ${errorMessage(e)}\n`);
    return e instanceof UsageError ? EXIT_USAGE : EXIT_SSH;
  }
  const target = { host: inv.target.machine, port: inv.port, user: await localUser(io.env), policy, request: requestText(inv.target, inv.args) };
  const ed25519 = fast.wire.parseOpensshEd25519(normalizeKeyText(text.text));
  if (ed25519 !== null) {
    const status = await runFast(fast, { ...target, identity: ed25519 }, io);
    // The server has none of the fast client's algorithms; its host key was not looked at yet.
    if (status !== "unsupported") return status;
  }
  let lib: ClientLib;
  let identity: Identity;
  try {
    lib = await loadClient(fast);
    identity = parseIdentity(lib, text.text, text.source);
  } catch (e) {
    await io.stderr.write(`pgoctl: ${errorMessage(e)}\n`);
    return EXIT_SSH;
  }
  return await runRemote(lib, { ...target, identity }, io);
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

/** The modules every run that connects needs: pgoctl's own client, known_hosts, loaded on demand. */
interface FastLib {
  client: typeof import("./ssh_client.ts");
  wire: typeof import("./ssh_wire.ts");
  knownHosts: typeof import("./known_hosts.ts");
  protocol: typeof import("./ssh_protocol.ts");
}

async function loadFast(): Promise<FastLib> {
  const [client, wire, knownHosts, protocol] = await Promise.all([
    import("./ssh_client.ts"),
    import("./ssh_wire.ts"),
    import("./known_hosts.ts"),
    import("./ssh_protocol.ts"),
  ]);
  return { client, wire, knownHosts, protocol };
}

/** The modules the ssh2 path needs besides those. */
interface ClientLib extends FastLib {
  Client: typeof import("ssh2").Client;
  parseKey: typeof import("ssh2").utils.parseKey;
}

async function loadClient(fast: FastLib): Promise<ClientLib> {
  const [client, keyParser] = await Promise.all([import("ssh2/lib/client.js"), import("ssh2/lib/protocol/keyParser.js")]);
  return { ...fast, Client: client.default, parseKey: keyParser.parseKey };
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
      return { text: await readText(file), source };
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

/**
 * A small file's text. Bun.mmap costs pgoctl about 1 ms of CPU where the first
 * Bun.file().text() of a process costs about 5 (bench/README.md). Pipes, empty and special
 * files cannot be mapped: they are read the usual way, which also gives the usual errors.
 */
async function readText(path: string): Promise<string> {
  try {
    return new TextDecoder().decode(Bun.mmap(path));
  } catch {
    return await Bun.file(path).text();
  }
}

/** Looks `key` up in a known_hosts file; a missing file knows no host. */
async function lookUpKnownHosts(lib: FastLib, file: string, key: HostKey): Promise<HostKeyResult> {
  let text: string;
  try {
    text = await readText(file);
  } catch (e) {
    if ((e as { code?: unknown }).code === "ENOENT") return { status: "unknown" };
    throw e;
  }
  return lib.knownHosts.matchHostKey(text, key);
}

/** CI variables often carry CRLF line ends or lose the final newline; neither matters to the key. */
function normalizeKeyText(raw: string): string {
  return `${raw.replace(/\r\n/g, "\n").trim()}\n`;
}

/** Parses the private key once; the SSH client gets the parsed key. */
function parseIdentity(lib: ClientLib, raw: string, source: string): Identity {
  const parsed: unknown = lib.parseKey(normalizeKeyText(raw));
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

/** Where to connect and what to run. */
interface Destination {
  host: string;
  port: number;
  user: string;
  policy: HostKeyPolicy;
  request: string;
}

interface Remote extends Destination {
  identity: Identity;
}

/** `host:port` for messages, the IPv6 address in brackets. */
function whereOf(r: Destination): string {
  return r.host.includes(":") ? `[${r.host}]:${r.port}` : `${r.host}:${r.port}`;
}

/**
 * Judges the server's host key by the policy, for both clients: resolves to undefined to go on,
 * or to why the key is refused. An unknown host under trust on first use is recorded here.
 */
async function judgeHostKey(lib: FastLib, r: Destination, blob: Buffer, io: PgoctlIO): Promise<string | undefined> {
  const { addHostKey, hostKeyName, pinnedHostKey } = lib.knownHosts;
  const policy = r.policy;
  const from = policy.mode === "pinned" ? policy.source : `"${policy.knownHosts}"`;
  const key: HostKey = { host: r.host, port: r.port, algo: lib.protocol.blobType(blob), blob };
  let found: HostKeyResult;
  try {
    found = policy.mode === "pinned" ? pinnedHostKey(policy.text, key) : await lookUpKnownHosts(lib, policy.knownHosts, key);
  } catch (e) {
    return `Cannot check the host key of "${whereOf(r)}" in ${from}: ${errorMessage(e)}`;
  }
  const fp = `${key.algo} key ${lib.protocol.fingerprint(blob)}`;
  const name = hostKeyName(r.host, r.port);
  switch (found.status) {
    case "known":
      return undefined;
    case "unknown":
      if (policy.mode === "pinned") return `Host key of "${name}" (${fp}) is not the one given in ${policy.source}`;
      if (policy.mode === "strict") {
        return (
          `Host key of "${name}" (${fp}) is not in "${policy.knownHosts}", and strict host key checking is on. ` +
          `Add the host's key there or pass it with --host-key`
        );
      }
      try {
        await addHostKey(policy.knownHosts, key);
        await io.stderr.write(`pgoctl: Trusting "${name}" on first use: added its ${fp} to "${policy.knownHosts}"\n`);
      } catch (e) {
        await io.stderr.write(`pgoctl: Trusting "${name}" on first use (${fp}), but cannot record it in "${policy.knownHosts}": ${errorMessage(e)}\n`);
      }
      return undefined;
    case "changed":
      if (policy.mode === "pinned") return `Host key of "${name}" (${fp}) is not the one given in ${policy.source}`;
      return (
        `Host key of "${name}" has changed: it now offers ${fp}, but "${policy.knownHosts}" line ${found.line} holds another key. ` +
        `This may be an attack. If the change is expected, remove line ${found.line} of "${policy.knownHosts}" ` +
        `(ssh-keygen -R "${name}" -f "${policy.knownHosts}") and try again`
      );
    case "revoked":
      return `Host key of "${name}" (${fp}) is marked revoked in ${from} line ${found.line}`;
  }
}

/**
 * Runs the request on pgoctl's own client; returns the exit status, or "unsupported" when the
 * server has none of its algorithms (decided before the host key is judged: the caller then
 * starts over with ssh2, which checks everything again).
 */
async function runFast(lib: FastLib, r: Destination & { identity: Ed25519Identity }, io: PgoctlIO): Promise<number | "unsupported"> {
  const where = whereOf(r);
  const fail = async (message: string): Promise<number> => {
    await io.stderr.write(`pgoctl: ${message}\n`).catch(() => {});
    return EXIT_SSH;
  };
  try {
    const out = await lib.client.execSsh({
      host: r.host,
      port: r.port,
      user: r.user,
      identity: r.identity,
      command: r.request,
      checkHostKey: (blob) => judgeHostKey(lib, r, Buffer.from(blob), io),
      stdout: (chunk) => (warmUp(chunk.length), io.stdout.write(chunk)),
      stderr: (chunk) => (warmUp(chunk.length), io.stderr.write(chunk)),
      timeoutMs: CONNECT_TIMEOUT_MS,
      keepaliveMs: KEEPALIVE_MS,
      keepaliveCountMax: KEEPALIVE_COUNT_MAX,
    });
    if (out.broken) return EXIT_PIPE;
    if (out.code !== undefined) return out.code;
    if (out.signal !== undefined) return await fail(`Remote command killed by signal ${out.signal}`);
    return await fail("Remote command ended without an exit status");
  } catch (e) {
    if (!(e instanceof lib.client.SshClientError)) return await fail(`Connection to "${where}" failed: ${errorMessage(e)}`);
    switch (e.stage) {
      case "unsupported":
        return "unsupported";
      case "hostkey":
        return await fail(e.message);
      case "login": {
        const fp = lib.protocol.fingerprint(Buffer.from(r.identity.publicBlob));
        return await fail(`Cannot log in to "${where}" as "${r.user}": the server does not accept key ${fp}`);
      }
      case "timeout":
        return await fail(`Cannot connect to "${where}": no SSH handshake within ${CONNECT_TIMEOUT_MS / 1000} s`);
      case "connect":
        return await fail(`Cannot connect to "${where}": ${e.message}`);
      case "closed":
        return await fail(`Connection to "${where}" closed before the command finished`);
      case "exec":
        return await fail(`Cannot run the command on "${where}": ${e.message}`);
      case "session":
        return await fail(`Connection to "${where}" failed: ${e.message}`);
    }
  }
}

/** Connects with ssh2, checks the host key, runs the request and streams its output; returns the exit status. */
async function runRemote(lib: ClientLib, r: Remote, io: PgoctlIO): Promise<number> {
  const where = whereOf(r);
  const conn = new lib.Client();
  let hostKeyProblem: string | undefined;
  let loggedIn = false;
  let relaying = false;

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
      keepaliveInterval: KEEPALIVE_MS,
      keepaliveCountMax: KEEPALIVE_COUNT_MAX,
      hostVerifier: (blob: Buffer, verify: (ok: boolean) => void): void => {
        judgeHostKey(lib, r, blob, io).then((problem) => {
          hostKeyProblem = problem;
          verify(problem === undefined);
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
          warmUp(chunk.length);
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
