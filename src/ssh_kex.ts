/**
 * The key exchange of pgoctl's own SSH client (ssh_client.ts): what it offers, the server's
 * identification line, curve25519-sha256 with an ed25519 host key proven before it is judged,
 * the AES-GCM keys of each direction, and the messages a re-key may bring later.
 */

import { CIPHER_ALGORITHMS, HOST_KEY_ALGORITHMS, KEX_ALGORITHMS } from "./ssh_protocol.ts";
import {
  deriveKey,
  ed25519PublicKey,
  encodeKexInit,
  exchangeHash,
  GCM_KEY_LENGTH,
  GcmCipher,
  MAX_IDENT_LENGTH,
  MAX_PRE_IDENT_BYTES,
  mpint,
  MSG,
  negotiate,
  parseKexInit,
  SshProtocolError,
  SshReader,
  SshWriter,
  verifyEd25519,
  type KexInit,
} from "./ssh_wire.ts";
import { Link, SshClientError, Transport } from "./ssh_transport.ts";

/** The reason code of a DISCONNECT that ends a connection in good order (RFC 4253 section 11.1). */
export const DISCONNECT_BY_APPLICATION = 11;

/** Judges the server's host key blob: undefined to go on, or the message to fail with. */
export type CheckHostKey = (blob: Uint8Array) => Promise<string | undefined>;

export const CIPHERS = CIPHER_ALGORITHMS.filter((c) => c in GCM_KEY_LENGTH);
export const OFFER = {
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

/** The state that outlives one key exchange. */
export interface Session {
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
export interface Ephemeral {
  privateKey: CryptoKey;
  publicKey: Uint8Array;
}

export async function ephemeral(): Promise<Ephemeral> {
  const kp = (await crypto.subtle.generateKey({ name: "X25519" }, true, ["deriveBits"])) as CryptoKeyPair;
  return { privateKey: kp.privateKey, publicKey: new Uint8Array(await crypto.subtle.exportKey("raw", kp.publicKey)) };
}

/** Reads the server's identification line, skipping the other lines a server may send first. */
export async function readServerIdent(link: Link): Promise<Uint8Array> {
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
export function printable(s: string): string {
  return s.replace(/[\x00-\x1f\x7f-\x9f]/g, "?");
}

/** A DISCONNECT message as the error it ends the connection with (as ssh2 words it). */
export function disconnected(payload: Uint8Array): Error {
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
export async function keyExchange(
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

export function bytesSame(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

export async function makeCipher(secret: Uint8Array, hash: Uint8Array, sessionId: Uint8Array, ivLetter: string, keyLetter: string, name: string): Promise<GcmCipher> {
  const iv = deriveKey(secret, hash, ivLetter, sessionId, 12);
  const key = deriveKey(secret, hash, keyLetter, sessionId, GCM_KEY_LENGTH[name]!);
  return await GcmCipher.create(key, iv);
}

/**
 * The next message of a key exchange, which must be `type`. In the first key exchange in
 * strict mode nothing else may come; otherwise IGNORE and DEBUG are skipped.
 */
export async function readKexMessage(s: Session, type: number, first: boolean): Promise<Uint8Array> {
  for (;;) {
    const p = await s.t.read();
    if (p[0] === type) return p;
    if (p[0] === MSG.DISCONNECT) throw disconnected(p);
    if (!(first && s.strict) && (p[0] === MSG.IGNORE || p[0] === MSG.DEBUG)) continue;
    throw new SshProtocolError(`Handshake failed: received packet ${p[0]} instead of ${type}`);
  }
}

/** After the first key exchange: the next message that is not the transport's own business. */
export async function nextMessage(s: Session, checkHostKey: CheckHostKey): Promise<Uint8Array> {
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
export function unexpected(s: Session, p: Uint8Array): void {
  const known = (Object.values(MSG) as number[]).includes(p[0]!);
  if (known) throw new SshProtocolError(`Received unexpected packet ${p[0]}`);
  s.t.send(new SshWriter().byte(MSG.UNIMPLEMENTED).uint32((s.t.inSeq - 1) >>> 0).finish());
}

