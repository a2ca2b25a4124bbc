/**
 * pgoctl's own SSH client, for the one thing pgoctl does: log in with an Ed25519 key and run one
 * command (RFC 4253 transport, RFC 4252 public-key login, RFC 4254 session channel and exec).
 * It speaks curve25519-sha256, an ssh-ed25519 host key and AES-GCM only, on Bun's native
 * sockets and crypto.subtle: a cold ssh2 and node:crypto were most of a pgoctl run
 * (bench/README.md, "Whole-process clients"). Anything else (another key type, a server without
 * these algorithms) is left to ssh2: execSsh() then throws SshClientError "unsupported" before
 * the server's host key has been looked at, so the caller can start over with ssh2 and lose
 * none of the checks.
 *
 * Strict key exchange (kex-strict-c-v00@openssh.com, OpenSSH's Terrapin mitigation) is offered,
 * and used when the server offers it too (ssh2's server and OpenSSH do): the server's KEXINIT
 * must then be its first packet, nothing but key exchange messages may come until NEWKEYS, and
 * the sequence numbers start again at 0 after each NEWKEYS.
 */

import type { Socket } from "bun";
import { CIPHER_ALGORITHMS, HOST_KEY_ALGORITHMS, KEX_ALGORITHMS } from "./ssh_protocol.ts";
import {
  checkPacketLength,
  deriveKey,
  ed25519PublicKey,
  encodeKexInit,
  exchangeHash,
  framePacket,
  GCM_KEY_LENGTH,
  GCM_TAG_LENGTH,
  GcmCipher,
  importEd25519Seed,
  MAX_IDENT_LENGTH,
  MAX_PRE_IDENT_BYTES,
  mpint,
  MSG,
  negotiate,
  parseKexInit,
  SshProtocolError,
  SshReader,
  SshWriter,
  unpad,
  verifyEd25519,
  type Ed25519Identity,
  type KexInit,
} from "./ssh_wire.ts";

/** The identification line this client sends (RFC 4253 section 4.2), without CR LF. */
export const CLIENT_IDENT = "SSH-2.0-pgoctl";

/** How far the client got when it failed; the caller words its message from this. */
export type SshStage =
  /** Before the login succeeded: the socket, the handshake or the server broke off. */
  | "connect"
  /** The server has none of this client's algorithms: use a client that has more. Thrown before the host key is judged. */
  | "unsupported"
  /** The host key was refused by the caller's check; the message is the caller's. */
  | "hostkey"
  /** The server did not accept the key. */
  | "login"
  /** No login within the time allowed. */
  | "timeout"
  /** The connection closed cleanly before the command ran. */
  | "closed"
  /** The server refused the channel or the exec request. */
  | "exec"
  /** The connection failed while the command ran. */
  | "session";

/** Why execSsh() failed. */
export class SshClientError extends Error {
  override name = "SshClientError";
  constructor(
    readonly stage: SshStage,
    message: string,
  ) {
    super(message);
  }
}

/** What execSsh() needs. */
export interface ExecOptions {
  host: string;
  port: number;
  user: string;
  identity: Ed25519Identity;
  /** The command line sent in the exec request. */
  command: string;
  /**
   * Judges the server's host key blob, after the server has proven it holds the key (its
   * signature over the exchange hash is checked first). Resolves to undefined to go on, or to
   * the message to fail with (stage "hostkey"); the command is then never sent.
   */
  checkHostKey(blob: Uint8Array): Promise<string | undefined>;
  /** Takes one chunk of the command's stdout; rejects once the reader is gone. */
  stdout(chunk: Uint8Array): Promise<void>;
  /** Takes one chunk of the command's stderr. */
  stderr(chunk: Uint8Array): Promise<void>;
  /** How long connecting, the handshake and the login may take. */
  timeoutMs: number;
  /** With nothing heard for this long, ask the server whether it is there (OpenSSH's ServerAliveInterval). */
  keepaliveMs: number;
  /** How many unanswered keepalives end the connection. */
  keepaliveCountMax: number;
}

/** How the remote command ended. */
export interface ExecResult {
  code?: number;
  /** The signal name as ssh2 reports it: "SIGTERM". */
  signal?: string;
  /** stdout's reader went away; the connection was closed without waiting for the command. */
  broken: boolean;
}

/** The receive window this client grants, and the largest data packet it accepts (as ssh2's client). */
const WINDOW = 2 * 1024 * 1024;
const MAX_DATA = 32 * 1024;
const DISCONNECT_BY_APPLICATION = 11;

const CIPHERS = CIPHER_ALGORITHMS.filter((c) => c in GCM_KEY_LENGTH);
const OFFER = {
  kex: [...KEX_ALGORITHMS, "kex-strict-c-v00@openssh.com"],
  hostKey: [...HOST_KEY_ALGORITHMS],
  cipherCs: CIPHERS,
  cipherSc: CIPHERS,
  // Never used (AES-GCM authenticates itself), but a server looks for a common MAC all the same.
  macCs: ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-256"],
  macSc: ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-256"],
  compCs: ["none"],
  compSc: ["none"],
};

/** The socket, as a byte queue to read from and a writer that keeps order and waits for drain. */
class Link {
  private chunks: Uint8Array[] = [];
  private size = 0;
  private wake: (() => void) | undefined;
  private failure: Error | undefined;
  private eof = false;
  private unsent: Uint8Array[] = [];
  private constructor(private socket: Socket<undefined> | undefined) {}

  static async open(host: string, port: number): Promise<Link> {
    const link = new Link(undefined);
    try {
      link.socket = await Bun.connect({
        hostname: host,
        port,
        socket: {
          data: (_s, d) => link.received(d),
          drain: () => link.flush(),
          end: () => link.ended(),
          close: (_s, e) => (e ? link.fail(e) : link.ended()),
          error: (_s, e) => link.fail(e),
        },
      });
    } catch (e) {
      // Worded as Node's net module words it (what pgoctl printed with ssh2).
      const err = e as { code?: string; syscall?: string; message?: string };
      const what = !err.code
        ? (err.message ?? String(e))
        : err.syscall === "getaddrinfo"
          ? `getaddrinfo ${err.code} ${host}`
          : `${err.syscall ?? "connect"} ${err.code} ${host}:${port}`;
      throw new SshClientError("connect", what);
    }
    // Nagle's algorithm would hold our small handshake packets for the server's delayed ACKs.
    link.socket.setNoDelay(true);
    return link;
  }

  private received(d: Uint8Array): void {
    this.chunks.push(d.slice());
    this.size += d.length;
    this.notify();
  }
  private ended(): void {
    this.eof = true;
    this.notify();
  }
  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /** Ends the connection with `e`: pending and later reads throw it. The first failure wins. */
  fail(e: Error): void {
    this.failure ??= e;
    this.socket?.terminate();
    this.notify();
  }

  /** Closes the connection after what was written. */
  close(): void {
    this.failure ??= new SshClientError("closed", "Connection closed");
    this.socket?.end();
    this.notify();
  }

  private async wait(): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.eof) throw new SshClientError("closed", "Connection closed by the server");
    await new Promise<void>((r) => (this.wake = r));
  }

  /** The next `n` bytes. */
  async take(n: number): Promise<Uint8Array> {
    while (this.size < n) await this.wait();
    const first = this.chunks[0]!;
    let out: Uint8Array;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = new Uint8Array(n);
      let got = 0;
      while (got < n) {
        const c = this.chunks[0]!;
        const k = Math.min(c.length, n - got);
        out.set(c.subarray(0, k), got);
        got += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.size -= n;
    return out;
  }

  /** The next line ending in LF (at most `max` bytes with it), without CR LF. */
  async line(max: number): Promise<Uint8Array> {
    for (;;) {
      let seen = 0;
      for (const c of this.chunks) {
        const lf = c.indexOf(0x0a);
        if (lf >= 0) {
          if (seen + lf + 1 > max) throw new SshProtocolError("Identification line too long");
          const line = await this.take(seen + lf + 1);
          const end = line.length >= 2 && line[line.length - 2] === 0x0d ? line.length - 2 : line.length - 1;
          return line.subarray(0, end);
        }
        seen += c.length;
      }
      if (seen >= max) throw new SshProtocolError("Identification line too long");
      await this.wait();
    }
  }

  write(bytes: Uint8Array): void {
    if (this.failure || !this.socket) return;
    if (this.unsent.length > 0) {
      this.unsent.push(bytes);
      return;
    }
    const n = this.socket.write(bytes);
    if (n < bytes.length) this.unsent.push(bytes.subarray(Math.max(0, n)));
  }

  private flush(): void {
    while (this.unsent.length > 0 && this.socket && !this.failure) {
      const b = this.unsent[0]!;
      const n = this.socket.write(b);
      if (n < b.length) {
        this.unsent[0] = b.subarray(Math.max(0, n));
        return;
      }
      this.unsent.shift();
    }
  }
}

/** Transport-layer messages, which may be sent during a key exchange (RFC 4253 section 7.1). */
function isKexMessage(type: number): boolean {
  return (type >= 1 && type <= 4) || (type >= 20 && type <= 49);
}

/** Binary packets over a Link: framing, encryption, sequence numbers, holding back during a re-key. */
class Transport {
  /** Sequence number of the next packet read / sent (RFC 4253 section 6.4). */
  inSeq = 0;
  outSeq = 0;
  /** Packets read in all, for the keepalive. */
  received = 0;
  private inCipher: GcmCipher | null = null;
  private outCipher: GcmCipher | null = null;
  /** Packets framed (sealed, or being sealed) in order and not handed to the socket yet. */
  private queue: (Uint8Array | Promise<Uint8Array>)[] = [];
  private flushing = false;
  private writes: Promise<void> = Promise.resolve();
  /** Messages other than key exchange ones are held here while this client's key exchange runs. */
  private held: Uint8Array[] | null = null;

  constructor(readonly link: Link) {}

  /** The next packet's payload. */
  async read(): Promise<Uint8Array> {
    const head = await this.link.take(4);
    const length = new DataView(head.buffer, head.byteOffset, 4).getUint32(0);
    const cipher = this.inCipher;
    checkPacketLength(length, cipher !== null);
    const body = await this.link.take(length + (cipher ? GCM_TAG_LENGTH : 0));
    const payload = unpad(cipher ? await cipher.open(head, body) : body);
    if (payload.length === 0) throw new SshProtocolError("Malformed packet: empty payload");
    this.inSeq = (this.inSeq + 1) >>> 0;
    this.received++;
    return payload;
  }

  /** Queues a payload; packets go out in the order send() is called. */
  send(payload: Uint8Array): void {
    if (this.held && !isKexMessage(payload[0]!)) this.held.push(payload);
    else this.sendNow(payload);
  }

  private sendNow(payload: Uint8Array): void {
    const cipher = this.outCipher;
    const framed = framePacket(payload, cipher !== null);
    this.outSeq = (this.outSeq + 1) >>> 0;
    if (cipher === null) {
      this.queue.push(framed);
    } else {
      const sealed = cipher.seal(framed); // takes its nonce now, in packet order
      sealed.catch(() => {}); // failures are reported by flush()
      this.queue.push(sealed);
    }
    if (!this.flushing) this.writes = this.flush();
  }

  /**
   * Hands the queued packets to the socket in order, those queued in the same turn of the event
   * loop in one write: one segment for the server to read instead of several (the login goes
   * out with NEWKEYS).
   */
  private async flush(): Promise<void> {
    this.flushing = true;
    try {
      await null;
      while (this.queue.length > 0) {
        const batch = await Promise.all(this.queue.splice(0));
        if (batch.length === 1) {
          this.link.write(batch[0]!);
          continue;
        }
        const out = new Uint8Array(batch.reduce((n, b) => n + b.length, 0));
        let at = 0;
        for (const b of batch) {
          out.set(b, at);
          at += b.length;
        }
        this.link.write(out);
      }
    } catch (e) {
      this.link.fail(e as Error);
    } finally {
      this.flushing = false;
    }
  }

  /** Sends the identification line and the first KEXINIT in one write. */
  sendFirst(ident: Uint8Array, kexInit: Uint8Array): void {
    const framed = framePacket(kexInit, false);
    const out = new Uint8Array(ident.length + framed.length);
    out.set(ident);
    out.set(framed, ident.length);
    this.outSeq = (this.outSeq + 1) >>> 0;
    this.link.write(out);
  }

  /** Resolves once everything sent so far has been handed to the socket. */
  flushed(): Promise<void> {
    return this.writes;
  }

  /** From now until newKeysSent(), only key exchange messages go out; the rest waits. */
  holdBack(): void {
    this.held ??= [];
  }

  /** Switches the outgoing direction to `cipher` (just after NEWKEYS was queued) and sends what was held back. */
  newKeysSent(cipher: GcmCipher, strict: boolean): void {
    this.outCipher = cipher;
    if (strict) this.outSeq = 0;
    const held = this.held ?? [];
    this.held = null;
    for (const p of held) this.sendNow(p);
  }

  /** Switches the incoming direction to `cipher` (just after NEWKEYS was read). */
  newKeysReceived(cipher: GcmCipher, strict: boolean): void {
    this.inCipher = cipher;
    if (strict) this.inSeq = 0;
  }
}

/** The state that outlives one key exchange. */
interface Session {
  t: Transport;
  clientIdent: Uint8Array;
  serverIdent: Uint8Array;
  /** H of the first key exchange (RFC 4253 section 7.2). */
  sessionId?: Uint8Array;
  /** The host key the first key exchange verified: a re-key must show the same. */
  hostKey?: Uint8Array;
  /** Whether strict key exchange was agreed in the first key exchange. */
  strict: boolean;
}

/** An X25519 key pair, made early so the work overlaps with the network. */
interface Ephemeral {
  privateKey: CryptoKey;
  publicKey: Uint8Array;
}

async function ephemeral(): Promise<Ephemeral> {
  const kp = (await crypto.subtle.generateKey({ name: "X25519" }, true, ["deriveBits"])) as CryptoKeyPair;
  return { privateKey: kp.privateKey, publicKey: new Uint8Array(await crypto.subtle.exportKey("raw", kp.publicKey)) };
}

/** Reads the server's identification line, skipping the other lines a server may send first. */
async function readServerIdent(link: Link): Promise<Uint8Array> {
  let skipped = 0;
  for (;;) {
    const line = await link.line(MAX_IDENT_LENGTH);
    const text = new TextDecoder("latin1").decode(line);
    if (text.startsWith("SSH-")) {
      if (!text.startsWith("SSH-2.0-") && !text.startsWith("SSH-1.99-")) {
        throw new SshProtocolError(`Unsupported protocol version: ${JSON.stringify(text.slice(0, 40))}`);
      }
      if (line.includes(0)) throw new SshProtocolError("Malformed identification line");
      return line;
    }
    skipped += line.length + 2;
    if (skipped > MAX_PRE_IDENT_BYTES) throw new SshProtocolError("No identification line from the server");
  }
}

/** Server-chosen text for a message of ours: control characters (terminal escapes) replaced. */
function printable(s: string): string {
  return s.replace(/[\x00-\x1f\x7f-\x9f]/g, "?");
}

/** A DISCONNECT message as the error it ends the connection with (as ssh2 words it). */
function disconnected(payload: Uint8Array): Error {
  const r = new SshReader(payload, 1);
  const reason = r.uint32();
  const desc = printable(r.text().slice(0, 200));
  if (reason === DISCONNECT_BY_APPLICATION) return new SshClientError("closed", "Connection closed by the server");
  return new SshProtocolError(desc.trim() === "" ? `Unexpected disconnection reason: ${reason}` : desc);
}

/**
 * One key exchange, from the server's KEXINIT to both NEWKEYS. `ours` is this client's KEXINIT
 * payload, already sent. The first exchange checks the host key with `checkHostKey`; a re-key
 * requires the same host key again.
 */
async function keyExchange(
  s: Session,
  ours: Uint8Array,
  theirs: Uint8Array,
  eph: Promise<Ephemeral>,
  checkHostKey: (blob: Uint8Array) => Promise<string | undefined>,
  /** Payloads to send right after this client's NEWKEYS, in the same write (made from the session id). */
  after?: (sessionId: Uint8Array) => Promise<Uint8Array[]>,
): Promise<void> {
  const t = s.t;
  const first = s.sessionId === undefined;
  const server: KexInit = parseKexInit(theirs);
  const chosen = negotiate(parseKexInit(ours), server);
  if ("missing" in chosen) {
    if (first) throw new SshClientError("unsupported", `Handshake failed: no matching ${chosen.missing} algorithm`);
    throw new SshProtocolError(`Handshake failed: no matching ${chosen.missing} algorithm`);
  }
  // A server's guessed first key exchange packet cannot be right for curve25519 (the client
  // speaks first); ssh2 knows how to skip it.
  if (server.firstKexFollows) {
    if (first) throw new SshClientError("unsupported", "Handshake failed: the server guesses its key exchange");
    throw new SshProtocolError("Handshake failed: unexpected guessed key exchange packet");
  }
  if (first) s.strict = chosen.strict;
  const { privateKey, publicKey } = await eph;
  t.send(new SshWriter().byte(MSG.KEX_ECDH_INIT).string(publicKey).finish());

  const reply = await readKexMessage(s, MSG.KEX_ECDH_REPLY, first);
  const r = new SshReader(reply, 1);
  const hostKey = r.bytes().slice();
  const serverPublic = r.bytes().slice();
  const signature = r.bytes().slice();
  r.end();
  if (serverPublic.length !== 32) throw new SshProtocolError("Handshake failed: malformed curve25519 public key");
  const hostPublic = ed25519PublicKey(hostKey);
  let shared: Uint8Array;
  try {
    const peer = await crypto.subtle.importKey("raw", serverPublic, { name: "X25519" }, false, []);
    shared = new Uint8Array(await crypto.subtle.deriveBits({ name: "X25519", public: peer } as unknown as Parameters<SubtleCrypto["deriveBits"]>[0], privateKey, 256));
  } catch {
    throw new SshProtocolError("Handshake failed: bad curve25519 public key");
  }
  if (shared.every((b) => b === 0)) throw new SshProtocolError("Handshake failed: bad curve25519 public key");
  const secret = mpint(shared);
  const hash = exchangeHash({
    clientIdent: s.clientIdent,
    serverIdent: s.serverIdent,
    clientKexInit: ours,
    serverKexInit: theirs,
    hostKey,
    clientPublic: publicKey,
    serverPublic,
    secret,
  });
  // The signature first: a host key is only judged (and trusted on first use) once the server
  // has shown it holds it.
  if (!(await verifyEd25519(hostPublic, signature, hash))) {
    throw new SshProtocolError("Handshake failed: signature verification failed");
  }
  if (first) {
    const refused = await checkHostKey(hostKey);
    if (refused !== undefined) throw new SshClientError("hostkey", refused);
    s.sessionId = hash;
    s.hostKey = hostKey;
  } else if (!bytesSame(hostKey, s.hostKey!)) {
    throw new SshProtocolError("Handshake failed: the host key changed in a re-key");
  }
  const [out, inn] = await Promise.all([
    makeCipher(secret, hash, s.sessionId!, "A", "C", chosen.cipherCs),
    makeCipher(secret, hash, s.sessionId!, "B", "D", chosen.cipherSc),
  ]);
  const next = after ? await after(s.sessionId!) : [];
  t.send(new Uint8Array([MSG.NEWKEYS]));
  t.newKeysSent(out, s.strict);
  for (const p of next) t.send(p);
  await readKexMessage(s, MSG.NEWKEYS, first);
  t.newKeysReceived(inn, s.strict);
}

function bytesSame(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

async function makeCipher(secret: Uint8Array, hash: Uint8Array, sessionId: Uint8Array, ivLetter: string, keyLetter: string, name: string): Promise<GcmCipher> {
  const iv = deriveKey(secret, hash, ivLetter, sessionId, 12);
  const key = deriveKey(secret, hash, keyLetter, sessionId, GCM_KEY_LENGTH[name]!);
  return await GcmCipher.create(key, iv);
}

/**
 * The next message of a key exchange, which must be `type`. In the first key exchange in
 * strict mode nothing else may come; otherwise IGNORE and DEBUG are skipped.
 */
async function readKexMessage(s: Session, type: number, first: boolean): Promise<Uint8Array> {
  for (;;) {
    const p = await s.t.read();
    if (p[0] === type) return p;
    if (p[0] === MSG.DISCONNECT) throw disconnected(p);
    if (!(first && s.strict) && (p[0] === MSG.IGNORE || p[0] === MSG.DEBUG)) continue;
    throw new SshProtocolError(`Handshake failed: received packet ${p[0]} instead of ${type}`);
  }
}

/** After the first key exchange: the next message that is not the transport's own business. */
async function nextMessage(s: Session, checkHostKey: ExecOptions["checkHostKey"]): Promise<Uint8Array> {
  const t = s.t;
  for (;;) {
    const p = await t.read();
    switch (p[0]) {
      case MSG.IGNORE:
      case MSG.DEBUG:
      case MSG.UNIMPLEMENTED:
      case MSG.EXT_INFO:
        continue;
      case MSG.DISCONNECT:
        throw disconnected(p);
      case MSG.GLOBAL_REQUEST: {
        const r = new SshReader(p, 1);
        r.bytes();
        if (r.bool()) t.send(new Uint8Array([MSG.REQUEST_FAILURE]));
        continue;
      }
      case MSG.KEXINIT: {
        // The server starts a re-key: answer with our KEXINIT, hold everything else back.
        t.holdBack();
        const ours = encodeKexInit(OFFER);
        t.send(ours);
        await keyExchange(s, ours, p, ephemeral(), checkHostKey);
        continue;
      }
      default:
        return p;
    }
  }
}

/** Answers a message this client has no use for: UNIMPLEMENTED for an unknown type, an error for a known one out of place. */
function unexpected(s: Session, p: Uint8Array): void {
  const known = (Object.values(MSG) as number[]).includes(p[0]!);
  if (known) throw new SshProtocolError(`Received unexpected packet ${p[0]}`);
  s.t.send(new SshWriter().byte(MSG.UNIMPLEMENTED).uint32((s.t.inSeq - 1) >>> 0).finish());
}

/** Refuses a channel the server tries to open (forwarding, agent): this client opens its own only. */
function refuseChannelOpen(t: Transport, p: Uint8Array): boolean {
  if (p[0] !== MSG.CHANNEL_OPEN) return false;
  const r = new SshReader(p, 1);
  r.bytes();
  const sender = r.uint32();
  t.send(new SshWriter().byte(MSG.CHANNEL_OPEN_FAILURE).uint32(sender).uint32(1).string("").string("").finish());
  return true;
}

/**
 * Connects, checks the host key, logs in with the Ed25519 key, runs `command` and streams its
 * output; resolves with how it ended. Throws SshClientError (stage "unsupported" before the host
 * key is judged, when the server has none of this client's algorithms).
 */
export async function execSsh(o: ExecOptions): Promise<ExecResult> {
  return await new Exec(o).run();
}

/** One execSsh() call. */
class Exec {
  private link: Link | undefined;
  private t: Transport | undefined;
  private stage: SshStage = "connect";
  private timedOut = false;
  private keepalive: ReturnType<typeof setInterval> | undefined;

  constructor(private readonly o: ExecOptions) {}

  async run(): Promise<ExecResult> {
    const o = this.o;
    // Both take a few milliseconds of crypto: start them before the network needs them.
    const eph = ephemeral();
    const signingKey = importEd25519Seed(o.identity.seed);
    eph.catch(() => {});
    signingKey.catch(() => {});
    let timeout: () => void = () => {};
    const timer = setTimeout(() => timeout(), o.timeoutMs);
    try {
      this.link = await new Promise<Link>((resolve, reject) => {
        timeout = () => {
          this.timedOut = true;
          reject(new SshClientError("timeout", "Handshake timed out"));
        };
        Link.open(o.host, o.port).then((l) => (this.timedOut ? l.close() : resolve(l)), reject);
      });
      const link = this.link;
      timeout = () => {
        this.timedOut = true;
        link.fail(new SshClientError("timeout", "Handshake timed out"));
      };
      const t = (this.t = new Transport(link));
      const ours = encodeKexInit(OFFER);
      t.sendFirst(new TextEncoder().encode(`${CLIENT_IDENT}\r\n`), ours);
      const s: Session = { t, clientIdent: new TextEncoder().encode(CLIENT_IDENT), serverIdent: await readServerIdent(link), strict: false };

      // The server's KEXINIT; with strict key exchange it must be its very first packet.
      let theirs: Uint8Array;
      for (;;) {
        theirs = await t.read();
        if (theirs[0] === MSG.KEXINIT) break;
        if (theirs[0] === MSG.DISCONNECT) throw disconnected(theirs);
        if (theirs[0] !== MSG.IGNORE && theirs[0] !== MSG.DEBUG) {
          throw new SshProtocolError(`Handshake failed: received packet ${theirs[0]} before KEXINIT`);
        }
      }
      if (t.inSeq !== 1 && parseKexInit(theirs).kex.includes("kex-strict-s-v00@openssh.com")) {
        throw new SshProtocolError("Handshake failed: KEXINIT not first packet in strict KEX mode");
      }
      // The service request and the signed login go out with NEWKEYS: no "would this key do?"
      // round trip first, and no waiting for the service to be accepted.
      const blob = o.identity.publicBlob;
      const request = (w: SshWriter): SshWriter =>
        w.byte(MSG.USERAUTH_REQUEST).string(o.user).string("ssh-connection").string("publickey").bool(true).string("ssh-ed25519").string(blob);
      const login = async (sessionId: Uint8Array): Promise<Uint8Array[]> => {
        const signature = new Uint8Array(await crypto.subtle.sign("Ed25519", await signingKey, request(new SshWriter().string(sessionId)).finish()));
        return [
          new SshWriter().byte(MSG.SERVICE_REQUEST).string("ssh-userauth").finish(),
          request(new SshWriter()).string(new SshWriter().string("ssh-ed25519").string(signature).finish()).finish(),
        ];
      };
      await keyExchange(s, ours, theirs, eph, o.checkHostKey, login);
      const next = (): Promise<Uint8Array> => nextMessage(s, o.checkHostKey);
      const accept = await next();
      if (accept[0] !== MSG.SERVICE_ACCEPT) throw new SshProtocolError(`Received packet ${accept[0]} instead of SERVICE_ACCEPT`);
      for (;;) {
        const p = await next();
        if (p[0] === MSG.USERAUTH_SUCCESS) break;
        if (p[0] === MSG.USERAUTH_BANNER) continue;
        if (p[0] === MSG.USERAUTH_FAILURE) throw new SshClientError("login", "All configured authentication methods failed");
        unexpected(s, p);
      }
      clearTimeout(timer);
      this.stage = "exec";
      this.startKeepalive();

      t.send(new SshWriter().byte(MSG.CHANNEL_OPEN).string("session").uint32(0).uint32(WINDOW).uint32(MAX_DATA).finish());
      let remote: number;
      for (;;) {
        const p = await next();
        const r = new SshReader(p, 1);
        if (p[0] === MSG.CHANNEL_OPEN_CONFIRMATION) {
          if (r.uint32() !== 0) throw new SshProtocolError("Channel open confirmation for an unknown channel");
          remote = r.uint32();
          break;
        }
        if (p[0] === MSG.CHANNEL_OPEN_FAILURE) {
          if (r.uint32() !== 0) throw new SshProtocolError("Channel open failure for an unknown channel");
          r.uint32();
          throw new SshClientError("exec", `(SSH) Channel open failure: ${printable(r.text().slice(0, 200))}`);
        }
        if (!refuseChannelOpen(t, p)) unexpected(s, p);
      }
      t.send(new SshWriter().byte(MSG.CHANNEL_REQUEST).uint32(remote).string("exec").bool(true).string(o.command).finish());
      return await this.relay(s, remote, next);
    } catch (e) {
      if (this.timedOut) throw new SshClientError("timeout", "Handshake timed out");
      if (e instanceof SshClientError) throw e;
      // Before the login, "Cannot connect"; after it, "Connection ... failed" (as with ssh2).
      throw new SshClientError(this.stage === "connect" ? "connect" : "session", e instanceof Error ? e.message : String(e));
    } finally {
      clearTimeout(timer);
      clearInterval(this.keepalive);
      this.disconnect();
      await this.t?.flushed();
      this.link?.close();
    }
  }

  private disconnected = false;

  /** Says goodbye to the server (once). */
  private disconnect(): void {
    if (this.disconnected || !this.t) return;
    this.disconnected = true;
    this.t.send(new SshWriter().byte(MSG.DISCONNECT).uint32(DISCONNECT_BY_APPLICATION).string("").string("").finish());
  }

  /** With nothing heard for keepaliveMs, asks the server for an answer; too many unanswered end the connection. */
  private startKeepalive(): void {
    let seen = -1;
    let missed = 0;
    this.keepalive = setInterval(() => {
      const t = this.t!;
      if (t.received !== seen) {
        seen = t.received;
        missed = 0;
        return;
      }
      if (++missed > this.o.keepaliveCountMax) {
        this.link!.fail(new SshProtocolError("Keepalive timeout"));
        return;
      }
      t.send(new SshWriter().byte(MSG.GLOBAL_REQUEST).string("keepalive@openssh.com").bool(true).finish());
    }, this.o.keepaliveMs);
  }

  /** Streams the channel's output until the server closes it; grants window as the output is taken. */
  private async relay(s: Session, remote: number, next: () => Promise<Uint8Array>): Promise<ExecResult> {
    const o = this.o;
    const t = s.t;
    const result: ExecResult = { broken: false };
    let window = WINDOW;
    let consumed = 0;
    let closing = false;
    let execAnswered = false;
    let stdout: Promise<void> = Promise.resolve();
    let stderr: Promise<void> = Promise.resolve();
    let stderrGone = false;
    const credit = (n: number): void => {
      consumed += n;
      if (closing || consumed < WINDOW / 2) return;
      t.send(new SshWriter().byte(MSG.CHANNEL_WINDOW_ADJUST).uint32(remote).uint32(consumed).finish());
      window += consumed;
      consumed = 0;
    };
    const channel = (r: SshReader): void => {
      if (r.uint32() !== 0) throw new SshProtocolError("Message for an unknown channel");
    };
    try {
      for (;;) {
        const p = await next();
        const r = new SshReader(p, 1);
        switch (p[0]) {
          case MSG.CHANNEL_DATA:
          case MSG.CHANNEL_EXTENDED_DATA: {
            channel(r);
            const type = p[0] === MSG.CHANNEL_DATA ? 0 : r.uint32();
            const data = r.bytes();
            r.end();
            if (data.length > window || data.length > MAX_DATA) throw new SshProtocolError("Received more data than the window allows");
            window -= data.length;
            const n = data.length;
            if (type === 0) {
              stdout = stdout.then(async () => {
                if (result.broken) return;
                try {
                  await o.stdout(data);
                } catch {
                  // The reader is gone: stop here; the server sees the connection go.
                  result.broken = true;
                  this.link!.fail(new SshClientError("closed", "Stdout closed"));
                  return;
                }
                credit(n);
              });
            } else if (type === 1) {
              stderr = stderr.then(async () => {
                // A gone stderr only loses the rest of stderr, as before.
                if (!stderrGone) await o.stderr(data).catch(() => void (stderrGone = true));
                credit(n);
              });
            } else {
              credit(n);
            }
            break;
          }
          case MSG.CHANNEL_WINDOW_ADJUST:
            channel(r);
            break;
          case MSG.CHANNEL_SUCCESS:
            channel(r);
            execAnswered = true;
            this.stage = "session";
            break;
          case MSG.CHANNEL_FAILURE:
            channel(r);
            if (!execAnswered) throw new SshClientError("exec", "Unable to exec");
            break;
          case MSG.CHANNEL_REQUEST: {
            channel(r);
            const name = r.text();
            const wantReply = r.bool();
            if (name === "exit-status") result.code = r.uint32();
            else if (name === "exit-signal") result.signal = `SIG${printable(r.text().slice(0, 32))}`;
            else if (wantReply) t.send(new SshWriter().byte(MSG.CHANNEL_FAILURE).uint32(remote).finish());
            break;
          }
          case MSG.CHANNEL_EOF:
            channel(r);
            break;
          case MSG.CHANNEL_CLOSE:
            channel(r);
            closing = true;
            t.send(new SshWriter().byte(MSG.CHANNEL_CLOSE).uint32(remote).finish());
            this.disconnect();
            await Promise.all([stdout, stderr]);
            return result;
          default:
            if (!refuseChannelOpen(t, p)) unexpected(s, p);
        }
      }
    } catch (e) {
      if (result.broken) return result;
      // The connection ended without closing the channel: what came so far, as ssh2 reports it.
      if (e instanceof SshClientError && e.stage === "closed" && this.stage === "session") {
        await Promise.all([stdout, stderr]);
        return result;
      }
      throw e;
    }
  }
}
