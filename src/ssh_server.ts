/**
 * pgod's SSH server: adapts ssh2's server to two injected functions, `isKnownKey` at login and
 * `handle` per exec request. It owns the transport rules (pinned algorithms, public keys only,
 * exec only, limits, backpressure) and no business logic.
 */

import { createServer, type ListenOptions, type Server as NetServer, type Socket } from "node:net";
import { Server, type AuthContext, type ClientInfo, type Connection, type ServerChannel, type Session } from "ssh2";
import { errorMessage } from "./errors.ts";
import type { Logger } from "./log.ts";
import { loadHostKey } from "./ssh_host_key.ts";
import { holdKexInit } from "./ssh_kexinit.ts";
import { busiestAddress, DEFAULT_LIMITS, overLimit as passesLimit, type SshLimits } from "./ssh_limits.ts";
import { blobType, fingerprint, parseListenAddress, sshAlgorithms } from "./ssh_protocol.ts";
import { makeFullWarner, signatureProblem, type FullWarner } from "./ssh_login.ts";
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

/** The server's shared state, passed to the handlers below. */
interface Srv {
  readonly opts: SshServerOptions;
  readonly limits: SshLimits;
  readonly log: Logger;
  readonly ssh: Server;
  readonly unauthenticated: Set<Conn>; // insertion order: oldest first
  readonly authenticated: Set<Conn>;
  readonly byPeer: Map<string, Conn>;
  readonly running: Set<Promise<void>>;
  readonly warnFull: FullWarner;
  closing: boolean;
  nextId: number;
  evicted: number;
  lastEvictionWarning: number;
}

/** Starts the SSH server; resolves once it listens. */
export async function startSshServer(opts: SshServerOptions): Promise<SshServer> {
  const log = opts.logger;
  const listen = parseListenAddress(opts.listen);
  const hostKey = await loadHostKey(opts.hostKeyPath, log);
  const hostFingerprint = fingerprint(hostKey.blob);
  const limits: SshLimits = { ...DEFAULT_LIMITS, ...opts.limits };
  const srv: Srv = {
    opts,
    limits,
    log,
    ssh: new Server({ hostKeys: [hostKey.text], algorithms: sshAlgorithms(), ident: "pgod" }),
    unauthenticated: new Set(),
    authenticated: new Set(),
    byPeer: new Map(),
    running: new Set(),
    warnFull: makeFullWarner(limits, log),
    closing: false,
    nextId: 1,
    evicted: 0,
    lastEvictionWarning: 0,
  };
  srv.ssh.on("connection", (client, info) => onConnection(srv, client, info));
  const tcp = createServer((socket) => onSocket(srv, socket));
  await listenOn(tcp, listen);
  tcp.on("error", (e) => log.error("SSH listener error", { error: errorMessage(e) }));
  const address = tcp.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  log.info("SSH server listening", { listen: opts.listen, port, host_key: hostFingerprint });
  return { port, fingerprint: hostFingerprint, close: () => closeServer(srv, tcp) };
}

function listenOn(tcp: NetServer, listen: ListenOptions): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    tcp.once("error", reject);
    tcp.listen(listen, () => {
      tcp.off("error", reject);
      resolve();
    });
  });
}

/** Stops listening, drops every connection and waits (a while) for running requests. */
async function closeServer(srv: Srv, tcp: NetServer): Promise<void> {
  if (srv.closing) return;
  srv.closing = true;
  const closed = new Promise<void>((resolve) => tcp.close(() => resolve()));
  for (const c of [...srv.unauthenticated, ...srv.authenticated, ...srv.byPeer.values()]) c.socket.destroy();
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    Promise.allSettled([...srv.running]),
    new Promise((resolve) => (timer = setTimeout(resolve, CLOSE_WAIT_MS))),
  ]);
  clearTimeout(timer);
  await closed;
}

/** Connection accounting: registers a new TCP connection and hands it to ssh2. */
function onSocket(srv: Srv, socket: Socket): void {
  const { log, limits } = srv;
  // Socket errors (resets, garbage) end in 'close'; nothing to report beyond a debug line.
  socket.on("error", (e) => log.debug("SSH socket error", { conn: conn.id, error: errorMessage(e) }));
  const peer = peerKey(socket.remoteAddress, socket.remotePort);
  const conn: Conn = {
    id: srv.nextId++,
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
  if (srv.closing) {
    socket.destroy();
    return;
  }
  // Replies are small (a status, a line of output): send them now, not after the peer's delayed ACK.
  socket.setNoDelay(true);
  holdKexInit(socket);
  srv.unauthenticated.add(conn);
  srv.byPeer.set(peer, conn);
  conn.graceTimer = setTimeout(() => {
    log.debug("Dropping SSH connection: login grace time over", { conn: conn.id, addr: conn.addr });
    socket.destroy();
  }, limits.loginGraceMs);
  socket.once("close", () => forget(srv, conn));
  if (srv.unauthenticated.size > limits.maxUnauthenticated) evictUnauthenticated(srv);
  if (!socket.destroyed) srv.ssh.injectSocket(socket);
}

/** Connection accounting: a closed socket leaves every set and aborts its requests. */
function forget(srv: Srv, conn: Conn): void {
  clearTimeout(conn.graceTimer);
  clearTimeout(conn.idleTimer);
  clearTimeout(conn.execTimer);
  srv.unauthenticated.delete(conn);
  srv.authenticated.delete(conn);
  if (srv.byPeer.get(conn.peer) === conn) srv.byPeer.delete(conn.peer);
  conn.gone.abort();
}

// DECISIONS.md #4: when the cap on unauthenticated connections is hit, drop the oldest
// connection of the address holding the most of them instead of refusing the newcomer.
// Connections held open by hostile clients then make room for a client with a valid key
// (which logs in within a round trip or two) rather than locking it out.
function evictUnauthenticated(srv: Srv): void {
  const busiest = busiestAddress(srv.unauthenticated);
  for (const c of srv.unauthenticated) {
    if (c.addr !== busiest) continue;
    srv.unauthenticated.delete(c);
    c.socket.destroy();
    srv.evicted++;
    break;
  }
  const now = Date.now();
  if (now - srv.lastEvictionWarning >= 60_000) {
    srv.log.warn("Too many SSH connections waiting to log in: dropping the oldest", {
      max: srv.limits.maxUnauthenticated,
      addr: busiest,
      dropped: srv.evicted,
    });
    srv.lastEvictionWarning = now;
    srv.evicted = 0;
  }
}

function end(conn: Conn): void {
  conn.ending = true;
  conn.client?.end();
  setTimeout(() => conn.socket.destroy(), LINGER_MS).unref();
}

function armIdle(srv: Srv, conn: Conn): void {
  clearTimeout(conn.idleTimer);
  conn.idleTimer = setTimeout(() => {
    if (conn.sessions > 0) return;
    srv.log.debug("Closing idle SSH connection", { conn: conn.id, addr: conn.addr });
    end(conn);
  }, srv.limits.idleTimeoutMs);
}

/** Wires ssh2's events for one connection to the handlers below. */
function onConnection(srv: Srv, client: Connection, info: ClientInfo): void {
  const { log } = srv;
  const conn = srv.byPeer.get(peerKey(info.ip, info.port));
  if (!conn || conn.socket.destroyed) {
    client.on("error", () => {});
    client.end();
    return;
  }
  conn.client = client;
  client.on("error", (e) => log.debug("SSH connection error", { conn: conn.id, error: errorMessage(e) }));
  client.on("authentication", (ctx) => {
    if (conn.ending) return; // the disconnect is on its way; a pipelined attempt gets no answer
    authenticate(srv, conn, ctx).catch((e) => {
      log.error("SSH login check failed", { conn: conn.id, error: errorMessage(e) });
      ctx.reject(["publickey"]);
    });
  });
  client.on("ready", () => onLogin(srv, conn));
  client.on("session", (accept, reject) => onSession(srv, conn, accept, reject));
  // Forwarding (tcpip, streamlocal, global requests) has no listener, so ssh2 refuses it.
}

/** The auth handler: public keys only, signed with SHA-2, known to isKnownKey, within the limits. */
async function authenticate(srv: Srv, conn: Conn, ctx: AuthContext): Promise<void> {
  conn.user = printable(ctx.username.slice(0, 64));
  if (ctx.method !== "publickey") {
    // "none" is how clients ask which methods exist; it is not a failed attempt.
    if (ctx.method === "none") ctx.reject(["publickey"]);
    else refuse(srv, conn, ctx, `method ${ctx.method}`);
    return;
  }
  const blob = ctx.key.data;
  const key: ClientKey = { algo: blobType(blob) || ctx.key.algo, blob, fingerprint: fingerprint(blob), ip: conn.addr };
  const bad = signatureProblem(ctx, key);
  if (bad) return refuse(srv, conn, ctx, bad, key);
  const known = await isKnown(srv, key);
  if (conn.socket.destroyed) return;
  if (!known) return refuse(srv, conn, ctx, "unknown key", key);
  if (ctx.signature === undefined) {
    ctx.accept(); // the key would do: the client signs next
    return;
  }
  const full = overLimit(srv, key.fingerprint, conn.addr);
  if (full) {
    srv.warnFull(full, key.fingerprint, conn.addr);
    ctx.reject(["publickey"]);
    end(conn);
    return;
  }
  conn.key = key;
  ctx.accept();
}

/** opts.isKnownKey, with a throw logged and taken as "no". */
async function isKnown(srv: Srv, key: ClientKey): Promise<boolean> {
  try {
    return await srv.opts.isKnownKey(key);
  } catch (e) {
    srv.log.error("Cannot check an SSH client key", { key: key.fingerprint, error: errorMessage(e) });
    return false;
  }
}

/** Which limit a login with this key from this address would pass (ssh_limits.ts); null when none. */
function overLimit(srv: Srv, fp: string, addr: string): "key" | "address" | "all" | null {
  return passesLimit(srv.authenticated, fp, addr, srv.limits);
}

function refuse(srv: Srv, conn: Conn, ctx: AuthContext, why: string, key?: ClientKey): void {
  const { log } = srv;
  conn.failures++;
  const fields = { conn: conn.id, addr: conn.addr, user: conn.user, key: key?.fingerprint, reason: why };
  // A key offered without a signature is a question ("would this key do?"), not a login.
  if (ctx.method === "publickey" && ctx.signature === undefined) log.debug("SSH key not accepted", fields);
  else log.info("SSH login refused", fields);
  ctx.reject(["publickey"]);
  if (conn.failures >= srv.limits.maxAuthTries) {
    log.info("Closing SSH connection: too many failed logins", { conn: conn.id, addr: conn.addr, tries: conn.failures });
    end(conn);
  }
}

/** Connection accounting at login: moves the connection to the authenticated set, within the limits. */
function onLogin(srv: Srv, conn: Conn): void {
  const { log, authenticated } = srv;
  clearTimeout(conn.graceTimer);
  srv.unauthenticated.delete(conn);
  if (conn.socket.destroyed) return;
  authenticated.add(conn);
  conn.authenticated = true;
  log.debug("SSH login", { conn: conn.id, addr: conn.addr, user: conn.user, key: conn.key?.fingerprint });
  // Logins accepted at the same moment may together pass a limit: the later ones go.
  authenticated.delete(conn);
  const full = overLimit(srv, conn.key?.fingerprint ?? "", conn.addr);
  authenticated.add(conn);
  if (full) {
    srv.warnFull(full, conn.key?.fingerprint ?? "", conn.addr);
    end(conn);
    return;
  }
  armIdle(srv, conn);
  // A connection that never asks for anything must not hold its place (the idle timeout does
  // not run while a channel is open, so a channel without exec would hold it forever).
  conn.execTimer = setTimeout(() => {
    log.debug("Closing SSH connection: no exec request after login", { conn: conn.id, addr: conn.addr, key: conn.key?.fingerprint });
    end(conn);
  }, srv.limits.execWaitMs);
}

/** The session handler: one channel, exec only. */
function onSession(srv: Srv, conn: Conn, accept: () => Session, reject: () => void): void {
  const { log, limits } = srv;
  if (srv.closing || conn.ending || conn.sessions >= limits.maxSessions) {
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
    if (conn.sessions === 0 && conn.authenticated) armIdle(srv, conn);
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
    onExec(srv, conn, acceptExec, info.command);
  });
}

/** The exec handler: runs the request through opts.handle and tracks it until it ends. */
function onExec(srv: Srv, conn: Conn, acceptExec: () => ServerChannel | undefined, command: string): void {
  clearTimeout(conn.execTimer);
  const key = conn.key;
  if (key === undefined) return end(conn); // ssh2 opens sessions only after a login, which sets the key
  const channel = acceptExec();
  if (!channel) return;
  const p = serveExec(channel, { key, command, user: conn.user, addr: conn.addr, gone: conn.gone.signal }, {
    handle: srv.opts.handle, log: srv.log, maxRequestBytes: srv.limits.maxRequestBytes,
  }).finally(() => srv.running.delete(p));
  srv.running.add(p);
}

function peerKey(addr: string | undefined, port: number | undefined): string {
  return `${addr ?? ""}|${port ?? ""}`;
}
