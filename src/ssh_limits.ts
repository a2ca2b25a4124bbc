/**
 * The limits on SSH connections and the fair-share rule (DECISIONS.md #4): which connection
 * goes when too many wait to log in, and which login is refused once the pool is busy. Pure
 * functions over the connections the server holds.
 */

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

/** What the limits look at of a connection. */
export interface Peer {
  readonly addr: string;
  readonly key?: { fingerprint: string } | undefined;
}

/**
 * The address holding the most connections not logged in yet (the first to reach that count
 * wins a tie): when their cap is hit its oldest connection is dropped instead of the newcomer,
 * so connections held open by hostile clients make room for a client with a valid key.
 */
export function busiestAddress(waiting: Iterable<Peer>): string {
  const perAddr = new Map<string, number>();
  let busiest = "";
  let most = 0;
  for (const c of waiting) {
    const n = (perAddr.get(c.addr) ?? 0) + 1;
    perAddr.set(c.addr, n);
    if (n > most) [busiest, most] = [c.addr, n];
  }
  return busiest;
}

/**
 * Which limit on logged-in connections a login with this key from this address would pass;
 * null when none. Once the pool is busy, a key past its own limit (or an address past its
 * own) gets no more, so one key holder or one host can never take the whole pool from other
 * teams; below that, a burst of one key may use the room nobody else needs.
 */
export function overLimit(loggedIn: ReadonlySet<Peer>, fp: string, addr: string, limits: SshLimits): "key" | "address" | "all" | null {
  if (loggedIn.size >= limits.maxAuthenticated) return "all";
  if (loggedIn.size < limits.busyFrom) return null;
  let sameKey = 0;
  let sameAddr = 0;
  for (const c of loggedIn) {
    if (c.key?.fingerprint === fp) sameKey++;
    if (c.addr === addr) sameAddr++;
  }
  if (sameKey >= limits.maxPerKey) return "key";
  if (sameAddr >= limits.maxPerAddress) return "address";
  return null;
}
