/**
 * A scripted SSH server for tests of pgoctl's own client (src/ssh_client.ts): each connection
 * runs a script that can do the normal steps (identification, key exchange, login, exec) and
 * break them where a hostile server would. Built on src/ssh_wire.ts for framing; the real
 * servers (pgod's ssh2 server, OpenSSH's sshd) check the same framing independently.
 */
import type { Socket } from "bun";
import {
  checkPacketLength,
  deriveKey,
  ed25519Blob,
  encodeKexInit,
  exchangeHash,
  framePacket,
  GCM_TAG_LENGTH,
  GcmCipher,
  mpint,
  MSG,
  parseKexInit,
  SshReader,
  SshWriter,
  unpad,
  type KexInit,
} from "../src/ssh_wire.ts";

/** The algorithms the fake server offers unless a script says otherwise. */
export const SERVER_OFFER: Omit<KexInit, "firstKexFollows"> = {
  kex: ["curve25519-sha256", "kex-strict-s-v00@openssh.com"],
  hostKey: ["ssh-ed25519"],
  cipherCs: ["aes256-gcm@openssh.com"],
  cipherSc: ["aes256-gcm@openssh.com"],
  macCs: ["hmac-sha2-256"],
  macSc: ["hmac-sha2-256"],
  compCs: ["none"],
  compSc: ["none"],
};

/** An Ed25519 host key. */
export interface HostKey {
  blob: Uint8Array;
  privateKey: CryptoKey;
}

export async function makeHostKey(): Promise<HostKey> {
  const kp = (await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"])) as CryptoKeyPair;
  return { blob: ed25519Blob(new Uint8Array(await crypto.subtle.exportKey("raw", kp.publicKey))), privateKey: kp.privateKey };
}

/** How a script's key exchange goes wrong, if it does. */
export interface KexOptions {
  offer?: Partial<KexInit>;
  /** Sign something other than the exchange hash. */
  badSignature?: boolean;
  /** Use this host key instead of the server's. */
  hostKey?: HostKey;
  /** Send this before the server's KEXINIT (strict mode forbids it). */
  beforeKexInit?: Uint8Array;
  /** Send this between the ECDH reply and NEWKEYS. */
  beforeNewKeys?: Uint8Array;
  /** The client's KEXINIT was already read (a re-key the client started, or a script that read it). */
  clientKexInit?: Uint8Array;
}

/** One client connection as a script sees it. */
export class FakeConn {
  private chunks: Uint8Array[] = [];
  private size = 0;
  private wake: (() => void) | undefined;
  private closed = false;
  private inCipher: GcmCipher | null = null;
  private outCipher: GcmCipher | null = null;
  clientIdent = new Uint8Array();
  serverIdent = new TextEncoder().encode("SSH-2.0-fake");
  sessionId: Uint8Array | undefined;
  /** Every message type the client sent, in order. */
  readonly seen: number[] = [];
  /** Packets sent since the last NEWKEYS in strict mode (else since the start): the client's sequence number for the next. */
  sent = 0;
  /** Whether kex() agreed on strict key exchange. */
  strict = false;

  constructor(
    private readonly socket: Socket<undefined>,
    readonly hostKey: HostKey,
  ) {}

  received(d: Uint8Array): void {
    this.chunks.push(d.slice());
    this.size += d.length;
    this.notify();
  }
  ended(): void {
    this.closed = true;
    this.notify();
  }
  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private async take(n: number): Promise<Uint8Array> {
    while (this.size < n) {
      if (this.closed) throw new Error("client closed the connection");
      await new Promise<void>((r) => (this.wake = r));
    }
    const all = new Uint8Array(this.size);
    let off = 0;
    for (const c of this.chunks) {
      all.set(c, off);
      off += c.length;
    }
    this.chunks = [all.subarray(n)];
    this.size -= n;
    return all.subarray(0, n);
  }

  write(bytes: Uint8Array | string): void {
    if (!this.closed) this.socket.write(bytes);
  }

  end(): void {
    this.socket.end();
  }

  /** Reads the client's identification line and sends ours. */
  async identify(): Promise<void> {
    this.write(new Uint8Array([...this.serverIdent, 13, 10]));
    let line = new Uint8Array();
    for (;;) {
      const b = await this.take(1);
      if (b[0] === 0x0a) break;
      line = new Uint8Array([...line, b[0]!]);
    }
    this.clientIdent = line.at(-1) === 13 ? line.subarray(0, -1) : line;
  }

  /** The next packet's payload from the client. */
  async read(): Promise<Uint8Array> {
    const head = await this.take(4);
    const len = new DataView(head.buffer, head.byteOffset, 4).getUint32(0);
    checkPacketLength(len, this.inCipher !== null);
    const body = await this.take(len + (this.inCipher ? GCM_TAG_LENGTH : 0));
    const payload = unpad(this.inCipher ? await this.inCipher.open(head, body) : body).slice();
    this.seen.push(payload[0]!);
    return payload;
  }

  /** Sends one payload as a packet, encrypted once keys are in use. */
  async send(payload: Uint8Array): Promise<void> {
    this.write(await this.frame(payload));
  }

  /** The bytes send() would write, for scripts that tamper with them. */
  async frame(payload: Uint8Array): Promise<Uint8Array> {
    this.sent++;
    const framed = framePacket(payload, this.outCipher !== null);
    return this.outCipher ? await this.outCipher.seal(framed) : framed;
  }

  /** The server side of a curve25519-sha256 key exchange, broken as `o` says. */
  async kex(o: KexOptions = {}): Promise<void> {
    if (o.beforeKexInit) await this.send(o.beforeKexInit);
    const ours = encodeKexInit({ ...SERVER_OFFER, ...o.offer });
    if (o.offer?.firstKexFollows) ours[ours.length - 5] = 1;
    await this.send(ours);
    const theirs = o.clientKexInit ?? (await this.read());
    if (this.sessionId === undefined) {
      this.strict = parseKexInit(theirs).kex.includes("kex-strict-c-v00@openssh.com") && parseKexInit(ours).kex.includes("kex-strict-s-v00@openssh.com");
    }
    const init = await this.read();
    if (init[0] !== MSG.KEX_ECDH_INIT) throw new Error(`expected KEX_ECDH_INIT, got ${init[0]}`);
    const clientPublic = new SshReader(init, 1).bytes();
    const kp = (await crypto.subtle.generateKey({ name: "X25519" }, true, ["deriveBits"])) as CryptoKeyPair;
    const serverPublic = new Uint8Array(await crypto.subtle.exportKey("raw", kp.publicKey));
    const peer = await crypto.subtle.importKey("raw", clientPublic, { name: "X25519" }, false, []);
    const shared = new Uint8Array(
      await crypto.subtle.deriveBits({ name: "X25519", public: peer } as unknown as Parameters<SubtleCrypto["deriveBits"]>[0], kp.privateKey, 256),
    );
    const secret = mpint(shared);
    const hostKey = o.hostKey ?? this.hostKey;
    const hash = exchangeHash({
      clientIdent: this.clientIdent,
      serverIdent: this.serverIdent,
      clientKexInit: theirs,
      serverKexInit: ours,
      hostKey: hostKey.blob,
      clientPublic,
      serverPublic,
      secret,
    });
    this.sessionId ??= hash;
    const signed = o.badSignature ? new Uint8Array([...hash, 1]) : hash;
    const sig = new Uint8Array(await crypto.subtle.sign("Ed25519", hostKey.privateKey, signed));
    const reply = new SshWriter()
      .byte(MSG.KEX_ECDH_REPLY)
      .string(hostKey.blob)
      .string(serverPublic)
      .string(new SshWriter().string("ssh-ed25519").string(sig).finish())
      .finish();
    await this.send(reply);
    if (o.beforeNewKeys) await this.send(o.beforeNewKeys);
    const keyLength = (list: readonly string[] | undefined): number => ((list ?? [])[0] === "aes128-gcm@openssh.com" ? 16 : 32);
    const make = (iv: string, key: string, length: number): Promise<GcmCipher> =>
      GcmCipher.create(deriveKey(secret, hash, key, this.sessionId!, length), deriveKey(secret, hash, iv, this.sessionId!, 12));
    const [out, inn] = await Promise.all([
      make("B", "D", keyLength(o.offer?.cipherSc ?? SERVER_OFFER.cipherSc)),
      make("A", "C", keyLength(o.offer?.cipherCs ?? SERVER_OFFER.cipherCs)),
    ]);
    await this.send(new Uint8Array([MSG.NEWKEYS]));
    this.outCipher = out;
    if (this.strict) this.sent = 0;
    const nk = await this.read();
    if (nk[0] !== MSG.NEWKEYS) throw new Error(`expected NEWKEYS, got ${nk[0]}`);
    this.inCipher = inn;
  }

  /** Accepts the service request and the login. */
  async login(): Promise<{ user: string }> {
    const sr = await this.read();
    if (sr[0] !== MSG.SERVICE_REQUEST) throw new Error(`expected SERVICE_REQUEST, got ${sr[0]}`);
    await this.send(new SshWriter().byte(MSG.SERVICE_ACCEPT).string("ssh-userauth").finish());
    const ua = await this.read();
    if (ua[0] !== MSG.USERAUTH_REQUEST) throw new Error(`expected USERAUTH_REQUEST, got ${ua[0]}`);
    await this.send(new Uint8Array([MSG.USERAUTH_SUCCESS]));
    return { user: new SshReader(ua, 1).text() };
  }

  /** Accepts the session channel (as channel 5) and the exec request; returns the command. */
  async exec(): Promise<string> {
    const open = await this.read();
    if (open[0] !== MSG.CHANNEL_OPEN) throw new Error(`expected CHANNEL_OPEN, got ${open[0]}`);
    await this.send(new SshWriter().byte(MSG.CHANNEL_OPEN_CONFIRMATION).uint32(0).uint32(5).uint32(1 << 20).uint32(32768).finish());
    const req = await this.read();
    const r = new SshReader(req, 1);
    r.uint32();
    if (r.text() !== "exec") throw new Error("expected an exec request");
    r.bool();
    const command = r.text();
    await this.send(new SshWriter().byte(MSG.CHANNEL_SUCCESS).uint32(0).finish());
    return command;
  }

  /** Data on the client's channel 0. */
  async data(text: string | Uint8Array): Promise<void> {
    await this.send(new SshWriter().byte(MSG.CHANNEL_DATA).uint32(0).string(text).finish());
  }

  /** Exit status, EOF and close, as a server ends a command. */
  async exit(code: number): Promise<void> {
    await this.send(new SshWriter().byte(MSG.CHANNEL_REQUEST).uint32(0).string("exit-status").bool(false).uint32(code).finish());
    await this.send(new SshWriter().byte(MSG.CHANNEL_EOF).uint32(0).finish());
    await this.send(new SshWriter().byte(MSG.CHANNEL_CLOSE).uint32(0).finish());
  }
}

export interface FakeSshServer {
  port: number;
  hostKey: HostKey;
  /** The connections so far, newest last. */
  conns: FakeConn[];
  /** Errors the scripts threw (a script stops at the first). */
  errors: string[];
  close(): void;
}

/** Starts a server on 127.0.0.1 that runs `script` for every connection. */
export async function startFakeSshServer(script: (c: FakeConn) => Promise<void>): Promise<FakeSshServer> {
  const hostKey = await makeHostKey();
  const conns: FakeConn[] = [];
  const errors: string[] = [];
  const byKey = new WeakMap<object, FakeConn>();
  const listener = Bun.listen<undefined>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(socket) {
        socket.setNoDelay(true);
        const c = new FakeConn(socket, hostKey);
        byKey.set(socket, c);
        conns.push(c);
        script(c).catch((e: unknown) => {
          errors.push(e instanceof Error ? e.message : String(e));
          socket.end();
        });
      },
      data(socket, d) {
        byKey.get(socket)?.received(d);
      },
      close(socket) {
        byKey.get(socket)?.ended();
      },
      end(socket) {
        byKey.get(socket)?.ended();
      },
    },
  });
  return { port: listener.port, hostKey, conns, errors, close: () => listener.stop(true) };
}
