/**
 * pgod's SSH server: adapts ssh2's server to two injected functions, `isKnownKey` at login and
 * `handle` per exec request. It owns the transport rules (pinned algorithms, public keys only,
 * exec only, limits, backpressure) and no business logic.
 */

import { chmod, readFile, stat } from "node:fs/promises";
import { createServer, type AddressInfo, type Socket } from "node:net";
import type { Writable } from "node:stream";
import {
  Server,
  utils,
  type Algorithms,
  type AuthContext,
  type CipherAlgorithm,
  type CompressionAlgorithm,
  type Connection,
  type KexAlgorithm,
  type MacAlgorithm,
  type ParsedKey,
  type ServerChannel,
  type ServerHostKeyAlgorithm,
  type Session,
} from "ssh2";
import { errorMessage } from "./errors.ts";
import { writeFileAtomic } from "./files.ts";
import { blobType, fingerprint } from "./keys.ts";
import type { Logger } from "./log.ts";

/** Key exchange: curve25519 only (ssh2's server has no DH group exchange). */
export const KEX_ALGORITHMS: readonly KexAlgorithm[] = ["curve25519-sha256", "curve25519-sha256@libssh.org"];
/** Ciphers: AES-GCM and AES-CTR (Bun has no chacha20-poly1305). */
export const CIPHER_ALGORITHMS: readonly CipherAlgorithm[] = [
  "aes128-gcm@openssh.com",
  "aes256-gcm@openssh.com",
  "aes128-ctr",
  "aes192-ctr",
  "aes256-ctr",
];
/** MACs, used with the CTR ciphers only (GCM authenticates itself). */
export const MAC_ALGORITHMS: readonly MacAlgorithm[] = [
  "hmac-sha2-256-etm@openssh.com",
  "hmac-sha2-512-etm@openssh.com",
  "hmac-sha2-256",
  "hmac-sha2-512",
];
/** Host key algorithms: pgod has one ed25519 host key. */
export const HOST_KEY_ALGORITHMS: readonly ServerHostKeyAlgorithm[] = ["ssh-ed25519"];
/** Compression: none. */
export const COMPRESSION_ALGORITHMS: readonly CompressionAlgorithm[] = ["none"];

/** The pinned algorithms in the form ssh2's server and client take (fresh arrays each call). */
export function sshAlgorithms(): Algorithms {
  return {
    kex: [...KEX_ALGORITHMS],
    cipher: [...CIPHER_ALGORITHMS],
    hmac: [...MAC_ALGORITHMS],
    serverHostKey: [...HOST_KEY_ALGORITHMS],
    compress: [...COMPRESSION_ALGORITHMS],
  };
}

/** The public key a client logged in with. */
export interface ClientKey {
  algo: string;
  blob: Buffer;
  fingerprint: string;
  /** The client's address: `from="..."` key options are checked against it (none matches without it). */
  ip?: string;
}

/** An output stream of a request; `write` resolves when the channel can take more. */
export interface Sink {
  write(chunk: Uint8Array | string): Promise<void>;
}

/** What `handle` gets to answer a request with. */
export interface SessionIO {
  stdout: Sink;
  stderr: Sink;
  /** Aborted when the client goes away or closes the channel. */
  signal: AbortSignal;
}

/** Connection limits. */
export interface SshLimits {
  /** Connections that have not logged in yet; past this the oldest of the busiest address is dropped. */
  maxUnauthenticated: number;
  /** Logged-in connections in all; past this a new login is refused. */
  maxAuthenticated: number;
  /** Logged-in connections of one key; past this a new login with that key is refused while the pool is busy. */
  maxPerKey: number;
  /** Logged-in connections from one source address; past this a new login from there is refused while the pool is busy. */
  maxPerAddress: number;
  /**
   * The pool is busy from this many logged-in connections on: below it, a key or an address may
   * use the free room beyond its own limit (a CI job's burst), from it on it gets no more.
   */
  busyFrom: number;
  /** Time from login, and from opening a channel, to its exec request; past this the connection (or channel) is closed. */
  execWaitMs: number;
  /** Time from TCP accept to a successful login. */
  loginGraceMs: number;
  /** Failed login attempts per connection before it is closed. */
  maxAuthTries: number;
  /** A logged-in connection with no open channel for this long is closed. */
  idleTimeoutMs: number;
  /** Longest exec request, in bytes. */
  maxRequestBytes: number;
  /** Channels open at once on one connection. */
  maxSessions: number;
}

/** Default limits. The login grace leaves a person time to type the passphrase of an OpenSSH key. */
export const DEFAULT_LIMITS: Readonly<SshLimits> = {
  maxUnauthenticated: 64,
  maxAuthenticated: 128,
  maxPerKey: 16,
  maxPerAddress: 32,
  busyFrom: 64,
  execWaitMs: 10_000,
  loginGraceMs: 30_000,
  maxAuthTries: 6,
  idleTimeoutMs: 10 * 60_000,
  maxRequestBytes: 4096,
  maxSessions: 10,
};

export interface SshServerOptions {
  /** `:2222` (all addresses), `127.0.0.1:0`, `[::1]:2222`, `host:port`. */
  listen: string;
  /** The ed25519 host key; made (mode 0600) on first start and reused. */
  hostKeyPath: string;
  /** Login-time check: is this key allowed anywhere at all. */
  isKnownKey(key: ClientKey): boolean | Promise<boolean>;
  /** Runs one exec request and returns its exit status. */
  handle(key: ClientKey, command: string, io: SessionIO): Promise<number>;
  logger: Logger;
  limits?: Partial<SshLimits>;
}

/** A running SSH server. */
export interface SshServer {
  port: number;
  /** SHA256 fingerprint of the host key. */
  fingerprint: string;
  /** Stops listening, drops every connection (aborting running requests) and waits for them. */
  close(): Promise<void>;
}

/** Exit status when the request is malformed or too long (sysexits EX_USAGE). */
export const EXIT_USAGE = 64;
/** Exit status when `handle` throws (sysexits EX_SOFTWARE). */
export const EXIT_SOFTWARE = 70;

// Sink writes go to the channel in pieces of this size, so one huge chunk is never queued whole.
const PIECE = 64 * 1024;
// How long close() waits for running requests to notice their aborted signal.
const CLOSE_WAIT_MS = 5000;
// After an SSH disconnect message, how long a peer gets to close before its socket is destroyed.
const LINGER_MS = 2000;

/** Parses a listen address; a missing host means all addresses. */
export function parseListenAddress(s: string): { host?: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+(?:%[\w.-]+)?)\]|([^:[\]]*)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new Error(`Invalid listen address "${s}": expected ":port", "host:port" or "[ipv6]:port"`);
  }
  const host = m[1] ?? m[2] ?? "";
  return host === "" ? { port } : { host, port };
}

/** Clamps whatever `handle` returned into an exit status 0..255 (not a number: 70). */
export function clampStatus(n: unknown): number {
  if (typeof n !== "number" || !Number.isFinite(n)) return EXIT_SOFTWARE;
  return Math.min(255, Math.max(0, Math.trunc(n)));
}

interface Conn {
  readonly id: number;
  readonly socket: Socket;
  readonly peer: string;
  readonly addr: string;
  client?: Connection;
  user: string;
  key?: ClientKey;
  authenticated: boolean;
  /** Being closed by the server: further requests are ignored. */
  ending: boolean;
  failures: number;
  sessions: number;
  graceTimer?: ReturnType<typeof setTimeout>;
  idleTimer?: ReturnType<typeof setTimeout>;
  /** Runs from login until the first exec request. */
  execTimer?: ReturnType<typeof setTimeout>;
  readonly gone: AbortController;
}

/** Starts the SSH server; resolves once it listens. */
export async function startSshServer(opts: SshServerOptions): Promise<SshServer> {
  const limits: SshLimits = { ...DEFAULT_LIMITS, ...opts.limits };
  const log = opts.logger;
  const listen = parseListenAddress(opts.listen);
  const hostKey = await loadHostKey(opts.hostKeyPath, log);
  const hostFingerprint = fingerprint(hostKey.blob);

  const ssh = new Server({ hostKeys: [hostKey.text], algorithms: sshAlgorithms(), ident: "pgod" });
  const unauthenticated = new Set<Conn>(); // insertion order: oldest first
  const authenticated = new Set<Conn>();
  const byPeer = new Map<string, Conn>();
  const running = new Set<Promise<void>>();
  let closing = false;
  let nextId = 1;
  let evicted = 0;
  let lastEvictionWarning = 0;

  const tcp = createServer((socket) => onSocket(socket));

  function onSocket(socket: Socket): void {
    // Socket errors (resets, garbage) end in 'close'; nothing to report beyond a debug line.
    socket.on("error", (e) => log.debug("SSH socket error", { conn: conn.id, error: errorMessage(e) }));
    const peer = peerKey(socket.remoteAddress, socket.remotePort);
    const conn: Conn = {
      id: nextId++,
      socket,
      peer,
      addr: socket.remoteAddress ?? "",
      user: "",
      authenticated: false,
      ending: false,
      failures: 0,
      sessions: 0,
      gone: new AbortController(),
    };
    if (closing) {
      socket.destroy();
      return;
    }
    // Replies are small (a status, a line of output): send them now, not after the peer's delayed ACK.
    socket.setNoDelay(true);
    unauthenticated.add(conn);
    byPeer.set(peer, conn);
    conn.graceTimer = setTimeout(() => {
      log.debug("Dropping SSH connection: login grace time over", { conn: conn.id, addr: conn.addr });
      socket.destroy();
    }, limits.loginGraceMs);
    socket.once("close", () => {
      clearTimeout(conn.graceTimer);
      clearTimeout(conn.idleTimer);
      clearTimeout(conn.execTimer);
      unauthenticated.delete(conn);
      authenticated.delete(conn);
      if (byPeer.get(peer) === conn) byPeer.delete(peer);
      conn.gone.abort();
    });
    if (unauthenticated.size > limits.maxUnauthenticated) evictUnauthenticated();
    if (!socket.destroyed) ssh.injectSocket(socket);
  }

  // DECISIONS.md #4: when the cap on unauthenticated connections is hit, drop the oldest
  // connection of the address holding the most of them instead of refusing the newcomer.
  // Connections held open by hostile clients then make room for a client with a valid key
  // (which logs in within a round trip or two) rather than locking it out.
  function evictUnauthenticated(): void {
    const perAddr = new Map<string, number>();
    let busiest = "";
    let most = 0;
    for (const c of unauthenticated) {
      const n = (perAddr.get(c.addr) ?? 0) + 1;
      perAddr.set(c.addr, n);
      if (n > most) [busiest, most] = [c.addr, n];
    }
    for (const c of unauthenticated) {
      if (c.addr !== busiest) continue;
      unauthenticated.delete(c);
      c.socket.destroy();
      evicted++;
      break;
    }
    const now = Date.now();
    if (now - lastEvictionWarning >= 60_000) {
      log.warn("Too many SSH connections waiting to log in: dropping the oldest", {
        max: limits.maxUnauthenticated,
        addr: busiest,
        dropped: evicted,
      });
      lastEvictionWarning = now;
      evicted = 0;
    }
  }

  function end(conn: Conn): void {
    conn.ending = true;
    conn.client?.end();
    setTimeout(() => conn.socket.destroy(), LINGER_MS).unref();
  }

  function armIdle(conn: Conn): void {
    clearTimeout(conn.idleTimer);
    conn.idleTimer = setTimeout(() => {
      if (conn.sessions > 0) return;
      log.debug("Closing idle SSH connection", { conn: conn.id, addr: conn.addr });
      end(conn);
    }, limits.idleTimeoutMs);
  }

  ssh.on("connection", (client, info) => {
    const conn = byPeer.get(peerKey(info.ip, info.port));
    if (!conn || conn.socket.destroyed) {
      client.on("error", () => {});
      client.end();
      return;
    }
    conn.client = client;
    client.on("error", (e) => log.debug("SSH connection error", { conn: conn.id, error: errorMessage(e) }));
    client.on("authentication", (ctx) => {
      if (conn.ending) return; // the disconnect is on its way; a pipelined attempt gets no answer
      authenticate(conn, ctx).catch((e) => {
        log.error("SSH login check failed", { conn: conn.id, error: errorMessage(e) });
        ctx.reject(["publickey"]);
      });
    });
    client.on("ready", () => onLogin(conn));
    client.on("session", (accept, reject) => onSession(conn, accept, reject));
    // Forwarding (tcpip, streamlocal, global requests) has no listener, so ssh2 refuses it.
  });

  async function authenticate(conn: Conn, ctx: AuthContext): Promise<void> {
    conn.user = printable(ctx.username.slice(0, 64));
    if (ctx.method !== "publickey") {
      // "none" is how clients ask which methods exist; it is not a failed attempt.
      if (ctx.method === "none") ctx.reject(["publickey"]);
      else refuse(conn, ctx, `method ${ctx.method}`);
      return;
    }
    const blob = ctx.key.data;
    const key: ClientKey = { algo: blobType(blob) || ctx.key.algo, blob, fingerprint: fingerprint(blob), ip: conn.addr };
    // SHA-1 signatures ("ssh-rsa"), refused as OpenSSH 8.8 and later refuse them by default: an
    // RSA key signs with rsa-sha2-256 or rsa-sha2-512, which ssh2 reports as a hash algorithm.
    if (key.algo === "ssh-rsa" && ctx.hashAlgo !== "sha256" && ctx.hashAlgo !== "sha512") {
      refuse(conn, ctx, "ssh-rsa (SHA-1) signature", key);
      return;
    }
    if (ctx.signature !== undefined) {
      const parsed = utils.parseKey(blob);
      if (parsed instanceof Error || ctx.blob === undefined || parsed.verify(ctx.blob, ctx.signature, ctx.hashAlgo) !== true) {
        refuse(conn, ctx, "bad signature", key);
        return;
      }
    }
    let known = false;
    try {
      known = await opts.isKnownKey(key);
    } catch (e) {
      log.error("Cannot check an SSH client key", { key: key.fingerprint, error: errorMessage(e) });
    }
    if (conn.socket.destroyed) return;
    if (!known) {
      refuse(conn, ctx, "unknown key", key);
      return;
    }
    if (ctx.signature === undefined) {
      ctx.accept(); // the key would do: the client signs next
      return;
    }
    const full = overLimit(key.fingerprint, conn.addr);
    if (full) {
      warnFull(full, key.fingerprint, conn.addr);
      ctx.reject(["publickey"]);
      end(conn);
      return;
    }
    conn.key = key;
    ctx.accept();
  }

  /**
   * Which limit on logged-in connections a login with this key from this address would pass;
   * null when none. Once the pool is busy, a key past its own limit (or an address past its
   * own) gets no more, so one key holder or one host can never take the whole pool from other
   * teams; below that, a burst of one key may use the room nobody else needs.
   */
  function overLimit(fp: string, addr: string): "key" | "address" | "all" | null {
    if (authenticated.size >= limits.maxAuthenticated) return "all";
    if (authenticated.size < limits.busyFrom) return null;
    let sameKey = 0;
    let sameAddr = 0;
    for (const c of authenticated) {
      if (c.key?.fingerprint === fp) sameKey++;
      if (c.addr === addr) sameAddr++;
    }
    if (sameKey >= limits.maxPerKey) return "key";
    if (sameAddr >= limits.maxPerAddress) return "address";
    return null;
  }

  const lastFullWarning = new Map<string, number>();
  function warnFull(which: "key" | "address" | "all", fp: string, addr: string): void {
    // One warning a minute per key (or address): a client retrying in a loop must not flood the log.
    const id = `${which}|${which === "address" ? addr : which === "key" ? fp : ""}`;
    const now = Date.now();
    if (now - (lastFullWarning.get(id) ?? 0) < 60_000) return;
    if (lastFullWarning.size > 1000) lastFullWarning.clear();
    lastFullWarning.set(id, now);
    const max = which === "key" ? limits.maxPerKey : which === "address" ? limits.maxPerAddress : limits.maxAuthenticated;
    const what = which === "key" ? "this key" : which === "address" ? "this address" : "all keys";
    log.warn(`Refusing SSH login: too many connections logged in with ${what}`, { max, key: fp, addr });
  }

  function refuse(conn: Conn, ctx: AuthContext, why: string, key?: ClientKey): void {
    conn.failures++;
    const fields = { conn: conn.id, addr: conn.addr, user: conn.user, key: key?.fingerprint, reason: why };
    // A key offered without a signature is a question ("would this key do?"), not a login.
    if (ctx.method === "publickey" && ctx.signature === undefined) log.debug("SSH key not accepted", fields);
    else log.info("SSH login refused", fields);
    ctx.reject(["publickey"]);
    if (conn.failures >= limits.maxAuthTries) {
      log.info("Closing SSH connection: too many failed logins", { conn: conn.id, addr: conn.addr, tries: conn.failures });
      end(conn);
    }
  }

  function onLogin(conn: Conn): void {
    clearTimeout(conn.graceTimer);
    unauthenticated.delete(conn);
    if (conn.socket.destroyed) return;
    authenticated.add(conn);
    conn.authenticated = true;
    log.debug("SSH login", { conn: conn.id, addr: conn.addr, user: conn.user, key: conn.key?.fingerprint });
    // Logins accepted at the same moment may together pass a limit: the later ones go.
    authenticated.delete(conn);
    const full = overLimit(conn.key?.fingerprint ?? "", conn.addr);
    authenticated.add(conn);
    if (full) {
      warnFull(full, conn.key?.fingerprint ?? "", conn.addr);
      end(conn);
      return;
    }
    armIdle(conn);
    // A connection that never asks for anything must not hold its place (the idle timeout does
    // not run while a channel is open, so a channel without exec would hold it forever).
    conn.execTimer = setTimeout(() => {
      log.debug("Closing SSH connection: no exec request after login", { conn: conn.id, addr: conn.addr, key: conn.key?.fingerprint });
      end(conn);
    }, limits.execWaitMs);
  }

  function onSession(conn: Conn, accept: () => Session, reject: () => void): void {
    if (closing || conn.ending || conn.sessions >= limits.maxSessions) {
      reject();
      return;
    }
    const session = accept();
    conn.sessions++;
    clearTimeout(conn.idleTimer);
    let open = true;
    // A channel that asks for no exec in time ends its connection, like one that asks for nothing
    // (ssh2 has no way to close a session channel before its exec). pgoctl never does this.
    const waitExec = setTimeout(() => {
      log.debug("Closing SSH connection: a channel made no exec request", { conn: conn.id, addr: conn.addr });
      end(conn);
    }, limits.execWaitMs);
    session.once("close", () => {
      clearTimeout(waitExec);
      if (!open) return;
      open = false;
      conn.sessions--;
      if (conn.sessions === 0 && conn.authenticated) armIdle(conn);
    });
    // Exec only. ssh2 refuses requests without a listener; these say so in the debug log.
    for (const ev of ["pty", "shell", "env", "x11", "auth-agent", "subsystem", "sftp", "signal", "window-change"]) {
      session.on(ev, (_accept: unknown, reject?: () => void) => {
        log.debug("SSH request refused", { conn: conn.id, request: ev });
        reject?.();
      });
    }
    session.once("exec", (acceptExec, _reject, info) => {
      clearTimeout(waitExec);
      clearTimeout(conn.execTimer);
      const channel = acceptExec();
      if (!channel) return;
      const p = runExec(conn, channel, info.command).finally(() => running.delete(p));
      running.add(p);
    });
  }

  async function runExec(conn: Conn, channel: ServerChannel, command: string): Promise<void> {
    const started = performance.now();
    const ac = new AbortController();
    const abort = (): void => ac.abort();
    channel.once("close", abort);
    conn.gone.signal.addEventListener("abort", abort, { once: true });
    channel.on("error", () => {});
    channel.stderr.on("error", () => {});
    // stdin is never read: discard it so the client's window keeps moving and the channel can close.
    channel.resume();
    const stdout = channelSink(channel, ac.signal);
    const stderr = channelSink(channel.stderr, ac.signal);
    const key = conn.key!;
    const bytes = Buffer.byteLength(command);
    let status: number;
    if (bytes > limits.maxRequestBytes) {
      await stderr.write(`Request too long: ${bytes} bytes, the limit is ${limits.maxRequestBytes}\n`);
      status = EXIT_USAGE;
    } else {
      try {
        status = clampStatus(await opts.handle(key, command, { stdout: stdout.sink, stderr: stderr.sink, signal: ac.signal }));
      } catch (e) {
        log.error("SSH request failed", { request: requestName(command), key: key.fingerprint, error: errorMessage(e) });
        await stderr.write("Internal error\n");
        status = EXIT_SOFTWARE;
      }
    }
    // The exit status goes after all output, then EOF and close.
    await Promise.all([stdout.flush(), stderr.flush()]);
    const gone = ac.signal.aborted;
    if (!gone) {
      channel.exit(status);
      channel.end();
    }
    channel.off("close", abort);
    conn.gone.signal.removeEventListener("abort", abort);
    log.info("SSH request", {
      request: requestName(command),
      key: key.fingerprint,
      user: conn.user,
      addr: conn.addr,
      status,
      ms: Math.round(performance.now() - started),
      client_gone: gone || undefined,
    });
  }

  await new Promise<void>((resolve, reject) => {
    tcp.once("error", reject);
    tcp.listen(listen, () => {
      tcp.off("error", reject);
      resolve();
    });
  });
  tcp.on("error", (e) => log.error("SSH listener error", { error: errorMessage(e) }));
  const port = (tcp.address() as AddressInfo).port;
  log.info("SSH server listening", { listen: opts.listen, port, host_key: hostFingerprint });

  return {
    port,
    fingerprint: hostFingerprint,
    async close(): Promise<void> {
      if (closing) return;
      closing = true;
      const closed = new Promise<void>((resolve) => tcp.close(() => resolve()));
      for (const c of [...unauthenticated, ...authenticated, ...byPeer.values()]) c.socket.destroy();
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        Promise.allSettled([...running]),
        new Promise((resolve) => (timer = setTimeout(resolve, CLOSE_WAIT_MS))),
      ]);
      clearTimeout(timer);
      await closed;
    },
  };
}

/** The first word of a request (`service//command`), for logs; arguments may hold secrets. */
/** The first word of a request (`service//command`), printable and short, for log lines. */
export function requestName(command: string): string {
  return printable((command.trimStart().split(/\s/, 1)[0] ?? "").slice(0, 100));
}

/** Replaces control characters in client-chosen text before it reaches a log line. */
function printable(s: string): string {
  return s.replace(/[\x00-\x1f\x7f-\x9f]/g, "?");
}

function peerKey(addr: string | undefined, port: number | undefined): string {
  return `${addr ?? ""}|${port ?? ""}`;
}

interface ChannelSink {
  sink: Sink;
  write(chunk: Uint8Array | string): Promise<void>;
  /** Waits until everything written has gone to the channel (or the client is gone); later writes are dropped. */
  flush(): Promise<void>;
}

/** A Sink over a channel stream that waits for 'drain' and never queues more than one piece past it. */
function channelSink(stream: Writable, signal: AbortSignal): ChannelSink {
  let queue: Promise<void> = Promise.resolve();
  let lastWritten: Promise<void> = Promise.resolve();
  let ended = false;
  const writeNow = async (chunk: Uint8Array | string): Promise<void> => {
    // A copy: the caller may reuse its buffer once write() resolves, while the stream still holds it.
    const buf = typeof chunk === "string" ? Buffer.from(chunk, "utf8") : Buffer.from(chunk);
    for (let off = 0; off < buf.length; off += PIECE) {
      if (ended || signal.aborted) return;
      let done!: () => void;
      lastWritten = new Promise<void>((resolve) => (done = resolve));
      const more = stream.write(buf.subarray(off, off + PIECE), () => done());
      if (!more) await until(stream, "drain", signal);
    }
  };
  const write = (chunk: Uint8Array | string): Promise<void> => {
    // Writes are chained so concurrent callers never interleave pieces.
    const p = queue.then(() => writeNow(chunk));
    queue = p.catch(() => {});
    return p;
  };
  return {
    sink: { write },
    write,
    async flush(): Promise<void> {
      await queue;
      ended = true;
      await Promise.race([lastWritten, until(stream, "close", signal)]);
    },
  };
}

/** Resolves on `event`, on the stream's close, or when `signal` aborts. */
function until(stream: Writable, event: string, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      stream.off(event, done);
      stream.off("close", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    stream.once(event, done);
    stream.once("close", done);
    signal.addEventListener("abort", done, { once: true });
  });
}

/**
 * A new ed25519 host key in OpenSSH format. Under Bun, about 1 in 200 keys that ssh2 generates
 * fail its own parser ("Malformed OpenSSH private key"), so a key is only kept once it parses.
 */
function newHostKey(): string {
  for (let i = 0; i < 50; i++) {
    const text = utils.generateKeyPairSync("ed25519").private;
    if (!(utils.parseKey(text) instanceof Error)) return text;
  }
  throw new Error("Cannot make an SSH host key that ssh2 can read");
}

/** Reads the host key, or makes one (atomically, mode 0600) when there is none. */
async function loadHostKey(path: string, log: Logger): Promise<{ text: string; blob: Buffer }> {
  let text: string | undefined;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    if ((e as { code?: unknown }).code !== "ENOENT") throw new Error(`Cannot read SSH host key "${path}": ${errorMessage(e)}`);
  }
  if (text === undefined) {
    text = newHostKey();
    await writeFileAtomic(path, text).catch((e: unknown) => {
      throw new Error(`Cannot write SSH host key: ${errorMessage(e)}`);
    });
    log.info("Created SSH host key", { file: path });
  } else {
    const st = await stat(path);
    if ((st.mode & 0o077) !== 0) {
      await chmod(path, 0o600);
      log.warn("SSH host key was readable by others: made it mode 0600", { file: path });
    }
  }
  const parsed: unknown = utils.parseKey(text);
  // ssh2 returns an array for a file holding several keys; pgod uses the first.
  const k = (Array.isArray(parsed) ? parsed[0] : parsed) as ParsedKey | Error;
  if (k instanceof Error) throw new Error(`Cannot use SSH host key "${path}": ${k.message}`);
  if (!k.isPrivateKey()) throw new Error(`Cannot use SSH host key "${path}": not a private key`);
  if (k.type !== "ssh-ed25519") throw new Error(`Cannot use SSH host key "${path}": a ${k.type} key, not ssh-ed25519`);
  return { text, blob: k.getPublicSSH() };
}

