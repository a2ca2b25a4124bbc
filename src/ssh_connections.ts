/**
 * SSH connections kept between polls, as OpenSSH's ControlMaster keeps them: one authenticated
 * connection per login (service user, host, port, remote user, and the keys and known_hosts lines
 * it was made with), and a new exec channel on it per poll, so an idle poll costs a channel and
 * not a key exchange and a login (bench/README.md, "Idle cost of ssh remotes").
 *
 * - Per tenant: a connection is only ever used for the service user (uid) that made it, with the
 *   same keys and known_hosts lines; when they change, the old connection is closed and a new
 *   one made, its host key checked again. At most `maxPerUser` connections per service user are
 *   kept (the least recently used idle one makes room; past that a poll gets a connection of its
 *   own, closed after it, as before connections were kept).
 * - One channel at a time per connection (a server may allow a single session); a second poll
 *   of the same login meanwhile gets another connection, or when the user has no room for one,
 *   waits a little for one of the login's to be free.
 * - A kept connection that is gone or does not open a channel in time is dropped and the poll
 *   tries once more on a new connection, within the same deadline; git is asked after that.
 * - No keepalives: a connection idle for `idleMs` is closed, and close() ends all of them
 *   (pgod's shutdown and restart).
 */
import type { Client, ClientChannel } from "ssh2";
import { RemoteTimeout, UnsupportedRemote } from "./refs.ts";

/** Who a connection logs in as, and with what: a connection is reused only for an equal login. */
export interface SshLogin {
  /** The service user polling: connections are never shared between two. */
  uid: number;
  host: string;
  port: number;
  user: string;
  /** The text of the keys and known_hosts lines the login uses: other text, other connection. */
  credentials: string;
}

/** What to run on a channel, and how a connection is made when none is kept. */
export interface ExecOptions<T> {
  connect: Connect;
  command: string;
  env: Record<string, string>;
  timeoutMs: number;
  /** Talks to the command; ends the channel when done. */
  talk: (ch: ClientChannel) => Promise<T>;
}

/** Makes a connection ready for channels, within `timeoutMs` (throws UnsupportedRemote or RemoteTimeout). */
export type Connect = (timeoutMs: number) => Promise<Client>;

export interface SshConnectionsOptions {
  /** Close a connection unused for this long (default 10 min). */
  idleMs?: number;
  /** The most connections kept per service user (default 4). */
  maxPerUser?: number;
}

interface Conn {
  client: Client;
  slot: string;
  uid: number;
  credentials: string;
  kept: boolean;
  busy: boolean;
  dead: boolean;
  usedAt: number;
  idle: ReturnType<typeof setTimeout> | undefined;
  /** Told when the connection goes away during a poll. */
  onLost: (() => void) | null;
  /** Resolves when the last poll's channel has closed (or the connection is dropped). */
  draining: Promise<void> | null;
}

/** The connection went away (or stopped answering) under a poll: worth one more try on a new one. */
class ConnectionLost extends Error {}

/** How long a kept connection may take to open a channel before it counts as gone (at most). */
const REUSE_CHECK_MS = 10_000;
/** How long a finished channel may take to close before its connection is dropped. */
const CHANNEL_CLOSE_MS = 10_000;

/** The kept SSH connections of one process (pgod has one: `sshConnections`). */
export class SshConnections {
  idleMs: number;
  maxPerUser: number;
  private readonly conns = new Set<Conn>();
  /** Polls waiting for a connection to be free: each takes one if it can. */
  private readonly waiters = new Set<() => boolean>();
  /** Connections made and dropped, for tests and the benchmark. */
  readonly counts = { made: 0, reused: 0, lost: 0 };

  constructor(o: SshConnectionsOptions = {}) {
    this.idleMs = o.idleMs ?? 10 * 60_000;
    this.maxPerUser = o.maxPerUser ?? 4;
  }

  /** How many connections are open (kept or in use). */
  get size(): number {
    return this.conns.size;
  }

  /**
   * Runs `o.talk` on an exec channel of `o.command` over a connection of `login`: a kept one when
   * there is one free, else one made by `o.connect`. Throws
   * RemoteTimeout when `timeoutMs` passes, UnsupportedRemote when no channel could be had.
   */
  async exec<T>(login: SshLogin, o: ExecOptions<T>): Promise<T> {
    const { connect, command, env, timeoutMs, talk } = o;
    const deadline = Date.now() + timeoutMs;
    let kept = this.take(login);
    // All the user's connections busy, some with this login: one of those is soon free, and
    // cheaper than a connection of this poll's own.
    if (kept === null && this.full(login)) kept = await this.wait(login, Math.min(REUSE_CHECK_MS, (deadline - Date.now()) / 2));
    if (kept !== null) {
      this.counts.reused++;
      try {
        return await this.attempt(kept, false, command, env, deadline, talk);
      } catch (e) {
        if (!(e instanceof ConnectionLost)) throw e;
        this.counts.lost++;
        if (Date.now() >= deadline) throw new RemoteTimeout("Cannot ask the remote for its branches: it did not answer in time");
      }
    }
    const c = await this.open(login, connect, deadline);
    try {
      return await this.attempt(c, true, command, env, deadline, talk);
    } catch (e) {
      if (e instanceof ConnectionLost) throw new UnsupportedRemote(`the SSH connection failed: ${e.message}`);
      throw e;
    }
  }

  /** Closes every connection (shutdown, restart); later polls make new ones. */
  close(): void {
    for (const c of [...this.conns]) this.drop(c);
  }

  /** Whether the user has no room for another connection and one of `login`'s is in use. */
  private full(login: SshLogin): boolean {
    const mine = [...this.conns].filter((c) => c.uid === login.uid);
    return mine.length >= this.maxPerUser && mine.every((c) => c.busy) && mine.some((c) => c.slot === slotOf(login));
  }

  /** A kept connection of `login` once one is free, or null after `ms`. */
  private wait(login: SshLogin, ms: number): Promise<Conn | null> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        resolve(null);
      }, Math.max(0, ms));
      const waiter = (): boolean => {
        const c = this.take(login);
        if (c === null) return false;
        clearTimeout(timer);
        resolve(c);
        return true;
      };
      this.waiters.add(waiter);
    });
  }

  /** A free kept connection of `login`, marked busy; closes the login's connections made with other credentials. */
  private take(login: SshLogin): Conn | null {
    const slot = slotOf(login);
    let found: Conn | null = null;
    for (const c of this.conns) {
      if (c.slot !== slot || c.busy) continue;
      if (c.credentials !== login.credentials) this.drop(c);
      else if (found === null) found = c;
    }
    if (found === null) return null;
    clearTimeout(found.idle);
    found.busy = true;
    return found;
  }

  /** A new connection, kept when the user has room for it (making room from an idle one if need be). */
  private async open(login: SshLogin, connect: Connect, deadline: number): Promise<Conn> {
    const mine = [...this.conns].filter((c) => c.uid === login.uid);
    let keep = mine.length < this.maxPerUser;
    if (!keep) {
      const idle = mine.filter((c) => !c.busy).sort((a, b) => a.usedAt - b.usedAt)[0];
      if (idle !== undefined) {
        this.drop(idle);
        keep = true;
      }
    }
    const c: Conn = {
      client: null as unknown as Client, slot: slotOf(login), uid: login.uid, credentials: login.credentials,
      kept: keep, busy: true, dead: false, usedAt: Date.now(), idle: undefined, onLost: null, draining: null,
    };
    if (keep) this.conns.add(c); // counted against the cap while it connects
    try {
      c.client = await connect(Math.max(1, deadline - Date.now()));
    } catch (e) {
      this.conns.delete(c);
      throw e;
    }
    this.counts.made++;
    if (c.dead) { // close() while it connected
      c.client.end();
      throw new UnsupportedRemote("the SSH connection was closed");
    }
    const gone = (): void => {
      c.dead = true;
      this.conns.delete(c);
      clearTimeout(c.idle);
      c.onLost?.();
    };
    c.client.on("close", gone);
    c.client.on("end", gone);
    c.client.on("error", gone);
    return c;
  }

  /**
   * One exec channel on `c` (`fresh`: just made); releases or drops `c` after. The previous
   * poll's channel may still be closing: the channel is opened once it has (one at a time).
   */
  private attempt<T>(c: Conn, fresh: boolean, command: string, env: Record<string, string>, deadline: number, talk: (ch: ClientChannel) => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      let opened = false;
      let talked = false;
      const finish = (e: Error | null, v?: T): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        clearTimeout(check);
        c.onLost = null;
        if (e !== null && !talked) this.drop(c); // the channel's state is unknown: not reused
        if (e) reject(e);
        else resolve(v as T);
      };
      const timer = setTimeout(() => finish(new RemoteTimeout("Cannot ask the remote for its branches: it did not answer in time")), Math.max(0, deadline - Date.now()));
      // A kept connection whose peer is gone without a word (a NAT forgot it, say) is found out
      // here, early enough to make a new one within the deadline.
      const check = fresh ? undefined : setTimeout(() => {
        if (!opened) finish(new ConnectionLost("it did not open a channel in time"));
      }, Math.min(REUSE_CHECK_MS, Math.max(0, deadline - Date.now()) / 2));
      c.onLost = () => finish(new ConnectionLost("it was closed"));
      const open = (): void => {
        if (settled) return;
        if (c.dead) return finish(new ConnectionLost("it was closed"));
        try {
          c.client.exec(command, { env }, (err, ch) => {
            opened = true;
            if (settled) return void ch?.close();
            if (err) return finish(fresh ? new UnsupportedRemote(`cannot run git-upload-pack: ${err.message}`) : new ConnectionLost(err.message));
            let closed = false;
            c.draining = new Promise<void>((r) => ch.on("close", () => {
              closed = true;
              r();
            }));
            talk(ch).then(
              (v) => {
                talked = true;
                finish(null, v);
              },
              (e: unknown) => {
                if (c.dead) return finish(new ConnectionLost("it was closed"));
                talked = true;
                finish(e instanceof Error ? e : new Error(String(e)));
              },
            ).finally(() => {
              if (!talked || c.dead) return;
              this.release(c);
              // A channel that does not close after the conversation leaves its connection unusable.
              if (!closed) setTimeout(() => closed || this.drop(c), CHANNEL_CLOSE_MS).unref?.();
            });
          });
        } catch (e) {
          finish(new ConnectionLost(e instanceof Error ? e.message : String(e)));
        }
      };
      if (c.draining === null) open();
      else void c.draining.then(open);
    });
  }

  /** `c` is free for the next poll (once its channel closed); kept for `idleMs`, or closed when it was not to be kept. */
  private release(c: Conn): void {
    c.busy = false;
    c.usedAt = Date.now();
    if (!c.kept) return this.drop(c);
    c.idle = setTimeout(() => this.drop(c), this.idleMs);
    c.idle.unref?.();
    for (const w of this.waiters) {
      if (!w()) continue;
      this.waiters.delete(w);
      break;
    }
  }

  /** Closes `c` and forgets it. */
  private drop(c: Conn): void {
    this.conns.delete(c);
    clearTimeout(c.idle);
    if (c.dead) return;
    c.dead = true;
    c.client?.end();
    // end() says goodbye; a peer that does not answer is not waited for.
    setTimeout(() => c.client?.destroy(), 1000).unref?.();
  }
}

/** The key of a login without its credentials. */
function slotOf(l: SshLogin): string {
  return `${l.uid}\0${l.user}\0${l.host}\0${l.port}`;
}

/** The connections pgod keeps. */
export const sshConnections: SshConnections = new SshConnections();
