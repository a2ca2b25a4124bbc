/**
 * The byte stream and the binary packets under pgoctl's own SSH client (ssh_client.ts): the
 * socket as a queue to read from and an ordered writer (Link), and RFC 4253 packets over it
 * (Transport: framing, AES-GCM, sequence numbers, holding back during a re-key).
 */

import type { Socket } from "bun";
import { checkPacketLength, framePacket, GCM_TAG_LENGTH, GcmCipher, SshProtocolError, unpad } from "./ssh_wire.ts";

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


/** The socket, as a byte queue to read from and a writer that keeps order and waits for drain. */
export class Link {
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
export function isKexMessage(type: number): boolean {
  return (type >= 1 && type <= 4) || (type >= 20 && type <= 49);
}

/** Binary packets over a Link: framing, encryption, sequence numbers, holding back during a re-key. */
export class Transport {
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

