/**
 * The SSH wire format for pgoctl's own client (ssh_client.ts): the encodings of RFC 4251, binary
 * packets (RFC 4253 section 6) in the clear and with AES-GCM as OpenSSH does it (RFC 5647 and
 * OpenSSH's PROTOCOL: the packet length is authenticated but not encrypted), KEXINIT and the
 * choice of algorithms, the curve25519-sha256 exchange hash (RFC 8731) and the key derivation
 * (RFC 4253 section 7.2). It uses Bun's native crypto only (crypto.subtle, Bun.CryptoHasher):
 * loading node:crypto or ssh2 is most of what a cold pgoctl used to spend (bench/README.md).
 * Every read is bounds-checked: the peer may be hostile.
 *
 * About 540 lines, on purpose: pure functions of bytes with no I/O, each a few lines, kept in one
 * file so that every encoding the client trusts is reviewed (and unit-tested) in one place.
 */

/** The peer broke the protocol, or sent something this client does not accept. */
export class SshProtocolError extends Error {
  override name = "SshProtocolError";
}

/** Message numbers (RFC 4250 section 4.1). */
export const MSG = {
  DISCONNECT: 1,
  IGNORE: 2,
  UNIMPLEMENTED: 3,
  DEBUG: 4,
  SERVICE_REQUEST: 5,
  SERVICE_ACCEPT: 6,
  EXT_INFO: 7,
  KEXINIT: 20,
  NEWKEYS: 21,
  KEX_ECDH_INIT: 30,
  KEX_ECDH_REPLY: 31,
  USERAUTH_REQUEST: 50,
  USERAUTH_FAILURE: 51,
  USERAUTH_SUCCESS: 52,
  USERAUTH_BANNER: 53,
  GLOBAL_REQUEST: 80,
  REQUEST_SUCCESS: 81,
  REQUEST_FAILURE: 82,
  CHANNEL_OPEN: 90,
  CHANNEL_OPEN_CONFIRMATION: 91,
  CHANNEL_OPEN_FAILURE: 92,
  CHANNEL_WINDOW_ADJUST: 93,
  CHANNEL_DATA: 94,
  CHANNEL_EXTENDED_DATA: 95,
  CHANNEL_EOF: 96,
  CHANNEL_CLOSE: 97,
  CHANNEL_REQUEST: 98,
  CHANNEL_SUCCESS: 99,
  CHANNEL_FAILURE: 100,
} as const;

/**
 * The largest packet_length accepted. RFC 4253 section 6.1 asks for packets of up to 35000
 * bytes in all; ssh2 refuses anything longer, and this client asks for channel packets of at
 * most 32 KiB. A little slack over 35000 for servers that count differently.
 */
export const MAX_PACKET_LENGTH = 36 * 1024;
/** The longest identification line (RFC 4253 section 4.2: 255 characters with CR LF). */
export const MAX_IDENT_LENGTH = 255;
/** How much a server may send before its identification line (other lines are allowed there). */
export const MAX_PRE_IDENT_BYTES = 8192;
/** The longest algorithm name (RFC 4251 section 6: 64 characters). */
const MAX_NAME_LENGTH = 64;
/** The most names in one name-list: real servers send a few dozen. */
const MAX_NAMES = 128;

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder("utf-8", { fatal: true });

/** Reads the encodings of RFC 4251 section 5 from one payload; any overrun is a SshProtocolError. */
export class SshReader {
  private pos = 0;
  private readonly view: DataView;
  constructor(private readonly buf: Uint8Array, start = 0) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    this.pos = start;
  }
  private need(n: number): void {
    if (n < 0 || this.pos + n > this.buf.length) throw new SshProtocolError("Malformed packet");
  }
  byte(): number {
    this.need(1);
    return this.buf[this.pos++]!;
  }
  bool(): boolean {
    return this.byte() !== 0;
  }
  uint32(): number {
    this.need(4);
    const v = this.view.getUint32(this.pos);
    this.pos += 4;
    return v;
  }
  /** `n` raw bytes (a view into the payload). */
  raw(n: number): Uint8Array {
    this.need(n);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }
  /** A `string` as bytes (a view into the payload). */
  bytes(): Uint8Array {
    return this.raw(this.uint32());
  }
  /** A `string` as UTF-8 text; invalid UTF-8 is malformed. */
  text(): string {
    try {
      return utf8Strict.decode(this.bytes());
    } catch (e) {
      if (e instanceof SshProtocolError) throw e;
      throw new SshProtocolError("Malformed packet: invalid UTF-8");
    }
  }
  /** A `name-list`: printable US-ASCII names without commas, none empty, at most 64 characters each. */
  nameList(): string[] {
    const b = this.bytes();
    if (b.length === 0) return [];
    if (b.length > MAX_NAMES * (MAX_NAME_LENGTH + 1)) throw new SshProtocolError("Malformed name-list: too long");
    for (const c of b) if (c <= 0x20 || c >= 0x7f) throw new SshProtocolError("Malformed name-list");
    const names = new TextDecoder("latin1").decode(b).split(",");
    if (names.length > MAX_NAMES || names.some((n) => n.length === 0 || n.length > MAX_NAME_LENGTH)) {
      throw new SshProtocolError("Malformed name-list");
    }
    return names;
  }
  /** The bytes not read yet. */
  remaining(): number {
    return this.buf.length - this.pos;
  }
  /** Fails unless every byte was read. */
  end(): void {
    if (this.pos !== this.buf.length) throw new SshProtocolError("Malformed packet: trailing bytes");
  }
}

/** Builds a payload from the encodings of RFC 4251 section 5. */
export class SshWriter {
  private buf = new Uint8Array(256);
  private len = 0;
  private grow(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }
  byte(v: number): this {
    this.grow(1);
    this.buf[this.len++] = v;
    return this;
  }
  bool(v: boolean): this {
    return this.byte(v ? 1 : 0);
  }
  uint32(v: number): this {
    this.grow(4);
    new DataView(this.buf.buffer).setUint32(this.len, v >>> 0);
    this.len += 4;
    return this;
  }
  raw(b: Uint8Array): this {
    this.grow(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
    return this;
  }
  /** A `string`: text is written as UTF-8. */
  string(v: Uint8Array | string): this {
    const b = typeof v === "string" ? utf8.encode(v) : v;
    return this.uint32(b.length).raw(b);
  }
  nameList(names: readonly string[]): this {
    return this.string(names.join(","));
  }
  /** An `mpint` from the big-endian bytes of a non-negative integer. */
  mpint(unsigned: Uint8Array): this {
    return this.raw(mpint(unsigned));
  }
  /** The payload written so far (a copy). */
  finish(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

/** The `mpint` encoding (length included) of a non-negative integer given as big-endian bytes. */
export function mpint(unsigned: Uint8Array): Uint8Array {
  let i = 0;
  while (i < unsigned.length && unsigned[i] === 0) i++;
  const digits = unsigned.subarray(i);
  const pad = digits.length > 0 && digits[0]! & 0x80 ? 1 : 0;
  const out = new Uint8Array(4 + pad + digits.length);
  new DataView(out.buffer).setUint32(0, pad + digits.length);
  out.set(digits, 4 + pad);
  return out;
}

/** Constant-time comparison of two byte strings. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i]! ^ b[i]!;
  return d === 0;
}

/** The algorithm lists of a KEXINIT (RFC 4253 section 7.1). */
export interface KexInit {
  kex: string[];
  hostKey: string[];
  cipherCs: string[];
  cipherSc: string[];
  macCs: string[];
  macSc: string[];
  compCs: string[];
  compSc: string[];
  firstKexFollows: boolean;
}

/** Encodes a KEXINIT payload (type byte included) with a fresh random cookie. */
export function encodeKexInit(k: Omit<KexInit, "firstKexFollows">): Uint8Array {
  return new SshWriter()
    .byte(MSG.KEXINIT)
    .raw(crypto.getRandomValues(new Uint8Array(16)))
    .nameList(k.kex)
    .nameList(k.hostKey)
    .nameList(k.cipherCs)
    .nameList(k.cipherSc)
    .nameList(k.macCs)
    .nameList(k.macSc)
    .nameList(k.compCs)
    .nameList(k.compSc)
    .nameList([])
    .nameList([])
    .bool(false)
    .uint32(0)
    .finish();
}

/** Parses a KEXINIT payload (type byte included). */
export function parseKexInit(payload: Uint8Array): KexInit {
  const r = new SshReader(payload);
  if (r.byte() !== MSG.KEXINIT) throw new SshProtocolError("Expected KEXINIT");
  r.raw(16);
  const k: KexInit = {
    kex: r.nameList(),
    hostKey: r.nameList(),
    cipherCs: r.nameList(),
    cipherSc: r.nameList(),
    macCs: r.nameList(),
    macSc: r.nameList(),
    compCs: r.nameList(),
    compSc: r.nameList(),
    firstKexFollows: false,
  };
  r.nameList();
  r.nameList();
  k.firstKexFollows = r.bool();
  r.uint32();
  r.end();
  return k;
}

/** What both sides agreed on. */
export interface Negotiated {
  kex: string;
  hostKey: string;
  cipherCs: string;
  cipherSc: string;
  /** The server offered kex-strict-s-v00@openssh.com (and this client always offers -c-). */
  strict: boolean;
}

/** The pseudo-algorithms in the kex list that name extensions, not key exchanges. */
const KEX_MARKERS = new Set(["ext-info-c", "ext-info-s", "kex-strict-c-v00@openssh.com", "kex-strict-s-v00@openssh.com"]);

/**
 * Chooses the algorithms (RFC 4253 section 7.1: the client's first that the server also has).
 * Returns the name of what has no match instead when the server has none of ours: the caller
 * then uses a client that knows more algorithms. MACs are not chosen: AES-GCM has its own.
 */
export function negotiate(client: KexInit, server: KexInit): Negotiated | { missing: string } {
  const pick = (ours: readonly string[], theirs: readonly string[]): string | undefined =>
    ours.find((a) => !KEX_MARKERS.has(a) && theirs.includes(a));
  const kex = pick(client.kex, server.kex);
  if (kex === undefined) return { missing: "key exchange" };
  const hostKey = pick(client.hostKey, server.hostKey);
  if (hostKey === undefined) return { missing: "host key" };
  const cipherCs = pick(client.cipherCs, server.cipherCs);
  if (cipherCs === undefined) return { missing: "C->S cipher" };
  const cipherSc = pick(client.cipherSc, server.cipherSc);
  if (cipherSc === undefined) return { missing: "S->C cipher" };
  if (pick(client.compCs, server.compCs) === undefined) return { missing: "C->S compression" };
  if (pick(client.compSc, server.compSc) === undefined) return { missing: "S->C compression" };
  return { kex, hostKey, cipherCs, cipherSc, strict: server.kex.includes("kex-strict-s-v00@openssh.com") };
}

/** SHA-256 of the concatenated parts (Bun's native hasher: synchronous, no module to load). */
export function sha256(...parts: Uint8Array[]): Uint8Array {
  const h = new Bun.CryptoHasher("sha256");
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
}

/** The parts of the curve25519-sha256 exchange hash (RFC 8731 section 3.1, RFC 5656 section 4). */
export interface ExchangeParts {
  /** The identification lines, without CR LF. */
  clientIdent: Uint8Array;
  serverIdent: Uint8Array;
  clientKexInit: Uint8Array;
  serverKexInit: Uint8Array;
  hostKey: Uint8Array;
  clientPublic: Uint8Array;
  serverPublic: Uint8Array;
  /** The shared secret K as an mpint (length included). */
  secret: Uint8Array;
}

/** The exchange hash H. */
export function exchangeHash(p: ExchangeParts): Uint8Array {
  const w = new SshWriter()
    .string(p.clientIdent)
    .string(p.serverIdent)
    .string(p.clientKexInit)
    .string(p.serverKexInit)
    .string(p.hostKey)
    .string(p.clientPublic)
    .string(p.serverPublic)
    .raw(p.secret);
  return sha256(w.finish());
}

/**
 * One key of RFC 4253 section 7.2: HASH(K || H || letter || session_id), extended with
 * HASH(K || H || K1 || ...) until `length` bytes. `secret` is K as an mpint.
 */
export function deriveKey(secret: Uint8Array, hash: Uint8Array, letter: string, sessionId: Uint8Array, length: number): Uint8Array {
  let out = sha256(secret, hash, utf8.encode(letter), sessionId);
  while (out.length < length) {
    const next = new Uint8Array(out.length + 32);
    next.set(out);
    next.set(sha256(secret, hash, out), out.length);
    out = next;
  }
  return out.subarray(0, length);
}

/** Key length in bytes of the AES-GCM ciphers this client knows. */
export const GCM_KEY_LENGTH: Readonly<Record<string, number>> = {
  "aes128-gcm@openssh.com": 16,
  "aes256-gcm@openssh.com": 32,
};
/** Bytes of the GCM authentication tag after each packet. */
export const GCM_TAG_LENGTH = 16;

/**
 * One direction of AES-GCM (RFC 5647 as in OpenSSH's PROTOCOL): a 12-byte nonce of a 4-byte
 * fixed field and an 8-byte invocation counter that grows by one per packet, the clear
 * packet_length as additional authenticated data, no MAC. seal() and open() take their nonce
 * when called, so calls made in packet order use nonces in packet order even while earlier
 * ones are still being computed.
 */
export class GcmCipher {
  private constructor(
    private readonly key: CryptoKey,
    private readonly nonce: Uint8Array,
  ) {}

  /** A cipher from the derived key and initial IV (12 bytes). */
  static async create(key: Uint8Array, iv: Uint8Array): Promise<GcmCipher> {
    if (iv.length !== 12) throw new Error("AES-GCM needs a 12-byte IV");
    const k = await crypto.subtle.importKey("raw", key, "AES-GCM", false, ["encrypt", "decrypt"]);
    return new GcmCipher(k, iv.slice());
  }

  /** The nonce for this packet; the counter moves on (wrapping at 2^64, as OpenSSH's does). */
  private next(): Uint8Array {
    const iv = this.nonce.slice();
    for (let i = 11; i >= 4; i--) {
      this.nonce[i] = (this.nonce[i]! + 1) & 0xff;
      if (this.nonce[i] !== 0) break;
    }
    return iv;
  }

  /** Encrypts one packet: `packet` is packet_length (clear, authenticated) then the rest. */
  async seal(packet: Uint8Array): Promise<Uint8Array> {
    const iv = this.next();
    const aad = packet.slice(0, 4);
    const sealed = await crypto.subtle.encrypt(
      { name: "AES-GCM", iv, additionalData: aad, tagLength: 128 },
      this.key,
      packet.subarray(4),
    );
    const out = new Uint8Array(4 + sealed.byteLength);
    out.set(aad);
    out.set(new Uint8Array(sealed), 4);
    return out;
  }

  /** Decrypts the body of one packet (ciphertext and tag); a wrong tag is "Invalid MAC". */
  async open(lengthField: Uint8Array, body: Uint8Array): Promise<Uint8Array> {
    const iv = this.next();
    try {
      const plain = await crypto.subtle.decrypt(
        { name: "AES-GCM", iv, additionalData: lengthField, tagLength: 128 },
        this.key,
        body,
      );
      return new Uint8Array(plain);
    } catch {
      throw new SshProtocolError("Invalid MAC");
    }
  }
}

/**
 * Frames a payload as a binary packet before encryption: packet_length, padding_length,
 * payload, random padding. `block` is 8 in the clear; with AES-GCM it is 16 and packet_length
 * is left out of the alignment, since it is not encrypted.
 */
export function framePacket(payload: Uint8Array, gcm: boolean): Uint8Array {
  const block = gcm ? 16 : 8;
  const aligned = gcm ? 1 + payload.length : 5 + payload.length;
  let pad = block - (aligned % block);
  if (pad < 4) pad += block;
  const length = 1 + payload.length + pad;
  const out = new Uint8Array(4 + length);
  new DataView(out.buffer).setUint32(0, length);
  out[4] = pad;
  out.set(payload, 5);
  crypto.getRandomValues(out.subarray(5 + payload.length));
  return out;
}

/**
 * Checks a packet_length read from the peer before anything more is read: at most
 * MAX_PACKET_LENGTH, room for padding, and block-aligned as framePacket aligns.
 */
export function checkPacketLength(length: number, gcm: boolean): void {
  const aligned = gcm ? length % 16 === 0 : (length + 4) % 8 === 0;
  if (length > MAX_PACKET_LENGTH || length < (gcm ? 16 : 12) || !aligned) {
    throw new SshProtocolError(`Bad packet length: ${length}`);
  }
}

/** The payload of a decrypted packet body (padding_length, payload, padding), after checking the padding. */
export function unpad(body: Uint8Array): Uint8Array {
  const pad = body[0]!;
  if (pad < 4 || pad > body.length - 2) throw new SshProtocolError("Bad padding length");
  return body.subarray(1, body.length - pad);
}

/** PKCS#8 header of an Ed25519 private key (RFC 8410): the 32-byte seed follows. */
const ED25519_PKCS8_HEADER = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/** An Ed25519 private key as OpenSSH stores it without a passphrase. */
export interface Ed25519Identity {
  /** The public key blob (`string "ssh-ed25519", string key`). */
  publicBlob: Uint8Array;
  /** The 32-byte seed. */
  seed: Uint8Array;
}

/** The blob of an Ed25519 public key. */
export function ed25519Blob(publicKey: Uint8Array): Uint8Array {
  return new SshWriter().string("ssh-ed25519").string(publicKey).finish();
}

/**
 * Reads an unencrypted OpenSSH ("openssh-key-v1") Ed25519 private key. Returns null for
 * anything else (PEM, another key type, a passphrase, a malformed file): the caller then hands
 * the key to the general parser, which says what is wrong with it.
 */
export function parseOpensshEd25519(text: string): Ed25519Identity | null {
  const m = /^-----BEGIN OPENSSH PRIVATE KEY-----\n([A-Za-z0-9+/=\s]+)\n-----END OPENSSH PRIVATE KEY-----\n?$/.exec(text.trim());
  if (!m) return null;
  const data = new Uint8Array(Buffer.from(m[1]!.replace(/\s+/g, ""), "base64"));
  const magic = utf8.encode("openssh-key-v1\0");
  if (data.length < magic.length || !bytesEqual(data.subarray(0, magic.length), magic)) return null;
  try {
    const r = new SshReader(data, magic.length);
    if (r.text() !== "none" || r.text() !== "none" || r.bytes().length !== 0 || r.uint32() !== 1) return null;
    const publicBlob = r.bytes().slice();
    const priv = new SshReader(r.bytes());
    r.end();
    const pub = new SshReader(publicBlob);
    if (pub.text() !== "ssh-ed25519") return null;
    const publicKey = pub.bytes();
    pub.end();
    if (publicKey.length !== 32) return null;
    if (priv.uint32() !== priv.uint32()) return null;
    if (priv.text() !== "ssh-ed25519" || !bytesEqual(priv.bytes(), publicKey)) return null;
    const secret = priv.bytes();
    if (secret.length !== 64 || !bytesEqual(secret.subarray(32), publicKey)) return null;
    priv.bytes(); // comment
    // Padding 1, 2, 3 ... up to the cipher's block size.
    for (let i = 1; priv.remaining() > 0; i++) if (priv.byte() !== i) return null;
    return { publicBlob, seed: secret.slice(0, 32) };
  } catch {
    return null;
  }
}

/** Imports an Ed25519 seed into WebCrypto for signing. */
export async function importEd25519Seed(seed: Uint8Array): Promise<CryptoKey> {
  const der = new Uint8Array(ED25519_PKCS8_HEADER.length + 32);
  der.set(ED25519_PKCS8_HEADER);
  der.set(seed, ED25519_PKCS8_HEADER.length);
  return await crypto.subtle.importKey("pkcs8", der, { name: "Ed25519" }, false, ["sign"]);
}

/** The raw 32-byte key of an ssh-ed25519 public key blob; a malformed blob is a SshProtocolError. */
export function ed25519PublicKey(blob: Uint8Array): Uint8Array {
  const r = new SshReader(blob);
  if (r.text() !== "ssh-ed25519") throw new SshProtocolError("Host key does not match negotiated type");
  const key = r.bytes();
  r.end();
  if (key.length !== 32) throw new SshProtocolError("Received malformed host public key");
  return key;
}

/** Verifies an ssh-ed25519 signature blob (`string "ssh-ed25519", string sig`) over `data`. */
export async function verifyEd25519(publicKey: Uint8Array, signatureBlob: Uint8Array, data: Uint8Array): Promise<boolean> {
  let sig: Uint8Array;
  try {
    const r = new SshReader(signatureBlob);
    if (r.text() !== "ssh-ed25519") return false;
    sig = r.bytes();
    r.end();
  } catch {
    return false;
  }
  if (sig.length !== 64) return false;
  try {
    const key = await crypto.subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
    return await crypto.subtle.verify("Ed25519", key, sig, data);
  } catch {
    return false;
  }
}
