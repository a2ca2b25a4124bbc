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
 *
 * The layers: ssh_transport.ts (the socket and binary packets), ssh_kex.ts (the key exchange),
 * this file (login, the session channel and exec).
 */

import {
  encodeKexInit,
  importEd25519Seed,
  MSG,
  parseKexInit,
  SshProtocolError,
  SshReader,
  SshWriter,
  type Ed25519Identity,
} from "./ssh_wire.ts";
import { DISCONNECT_BY_APPLICATION, disconnected, ephemeral, keyExchange, nextMessage, OFFER, printable, readServerIdent, unexpected, type Session } from "./ssh_kex.ts";
import { Link, SshClientError, Transport, type SshStage } from "./ssh_transport.ts";

export { SshClientError, type SshStage };

/** The identification line this client sends (RFC 4253 section 4.2), without CR LF. */
export const CLIENT_IDENT = "SSH-2.0-pgoctl";

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
