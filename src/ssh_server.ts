/**
 * pgod's SSH server: adapts ssh2's server to two injected functions, `isKnownKey` at login and
 * `handle` per exec request. It owns the transport rules (pinned algorithms, public keys only,
 * exec only, limits, backpressure) and no business logic.
 */

import { createServer, type Socket } from "node:net";
import { Server, utils, type AuthContext, type Connection, type Session } from "ssh2";
import { errorMessage } from "./errors.ts";
import type { Logger } from "./log.ts";
import { loadHostKey } from "./ssh_host_key.ts";
import { holdKexInit } from "./ssh_kexinit.ts";
import { busiestAddress, DEFAULT_LIMITS, overLimit as passesLimit, type SshLimits } from "./ssh_limits.ts";
import { blobType, fingerprint, parseListenAddress, sshAlgorithms } from "./ssh_protocol.ts";
import { printable, serveExec, type ClientKey, type SessionIO } from "./ssh_session.ts";

/** What startSshServer needs. */
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

// How long close() waits for running requests to notice their aborted signal.
const CLOSE_WAIT_MS = 5000;
// After an SSH disconnect message, how long a peer gets to close before its socket is destroyed.
const LINGER_MS = 2000;

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
    holdKexInit(socket);
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
    const busiest = busiestAddress(unauthenticated);
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

  /** Which limit a login with this key from this address would pass (ssh_limits.ts); null when none. */
  function overLimit(fp: string, addr: string): "key" | "address" | "all" | null {
    return passesLimit(authenticated, fp, addr, limits);
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
      const key = conn.key;
      if (key === undefined) return end(conn); // ssh2 opens sessions only after a login, which sets the key
      const channel = acceptExec();
      if (!channel) return;
      const p = serveExec(channel, { key, command: info.command, user: conn.user, addr: conn.addr, gone: conn.gone.signal }, {
        handle: opts.handle, log, maxRequestBytes: limits.maxRequestBytes,
      }).finally(() => running.delete(p));
      running.add(p);
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
  const address = tcp.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
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

function peerKey(addr: string | undefined, port: number | undefined): string {
  return `${addr ?? ""}|${port ?? ""}`;
}

