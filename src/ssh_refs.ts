/**
 * Where a branch of an SSH remote (`ssh://[user@]host[:port]/path` or scp-style
 * `[user@]host:path`) points, asked in-process: an SSH exec channel of `git-upload-pack '<path>'`
 * with git's protocol v2 `ls-refs` for that one branch (the v0 advertisement when the server
 * ignores GIT_PROTOCOL). An idle poll then starts no process (`git ls-remote` over ssh starts
 * three, bench/README.md), and the connection is kept for the next poll (src/ssh_connections.ts):
 * a poll is then one channel, not a key exchange and a login.
 *
 * It does what `ssh -o BatchMode=yes` would do for the service's user, and no more: the keys
 * `~/.ssh/id_ed25519`, `~/.ssh/id_ecdsa`, `~/.ssh/id_rsa` of that user (unencrypted, a regular
 * file owned by the user and readable by nobody else, as OpenSSH demands), checked against the
 * user's `~/.ssh/known_hosts` and `/etc/ssh/ssh_known_hosts`. Anything else throws
 * UnsupportedRemote and the caller asks `git ls-remote`: an unknown or changed host key (never
 * trusted on first use), no usable key, a `~/.ssh/config` or a configured `core.sshCommand`
 * (which may say other keys, hosts or ports), a refused login, an answer that is not git's.
 */
import { constants as fsc } from "node:fs";
import { lstat, open } from "node:fs/promises";
import type { Algorithms, ClientChannel, ParsedKey, PublicKeyAuthMethod, ServerHostKeyAlgorithm } from "ssh2";
import { Client, utils } from "ssh2";
import { hostKeyName, linesNaming, matchHostKey } from "./known_hosts.ts";
import { RemoteTimeout, UnsupportedRemote } from "./refs.ts";
import { type Connect, type SshConnections, sshConnections, type SshLogin } from "./ssh_connections.ts";
import { blobType } from "./ssh_protocol.ts";

/** An SSH remote, split. `path` is what git passes to git-upload-pack. */
export interface SshRemote {
  user?: string;
  host: string;
  port: number;
  path: string;
}

/** The service user whose keys and known_hosts are used. */
export interface SshAccount {
  name: string;
  uid: number;
  home: string;
}

export interface SshRefsOptions {
  timeoutMs: number;
  /** Files read for host keys (default the user's ~/.ssh/known_hosts and /etc/ssh/ssh_known_hosts). */
  knownHosts?: string[];
  /** Where a checkout's .git/config is, to see whether it sets core.sshCommand. */
  checkout?: string;
  /** The most bytes read of one answer (default 4 MiB). */
  maxBytes?: number;
  /** Where connections are kept between polls (default `sshConnections`, pgod's). */
  connections?: SshConnections;
}

/** Parses an ssh remote as git does; null for other URLs (http, file, paths, git://). */
export function parseSshRemote(url: string): SshRemote | null {
  const m = /^(?:git\+ssh|ssh\+git|ssh):\/\/(?:([^@/]+)@)?(\[[^\]/]+\]|[^:/]+)(?::(\d{1,5}))?(\/.*)$/i.exec(url);
  if (m) {
    const host = m[2]!.replace(/^\[(.*)\]$/, "$1");
    const port = m[3] === undefined || m[3] === "" ? 22 : Number(m[3]);
    // git turns ssh://host/~user/repo into the path "~user/repo".
    const path = m[4]!.startsWith("/~") ? m[4]!.slice(1) : m[4]!;
    return remote(m[1], host, port, path);
  }
  // scp-style: no "://", and no slash before the first colon (that would be a local path).
  if (url.includes("://")) return null;
  const s = /^(?:([^@/:]+)@)?(\[[^\]/]+\]|[^:/[\]]+):(.+)$/.exec(url);
  if (!s) return null;
  return remote(s[1], s[2]!.replace(/^\[(.*)\]$/, "$1"), 22, s[3]!);
}

function remote(user: string | undefined, host: string, port: number, path: string): SshRemote | null {
  // A host or user starting with "-" would be an option to ssh; git refuses them too.
  if (host === "" || host.startsWith("-") || user?.startsWith("-") || port < 1 || port > 65535 || path === "") return null;
  return user === undefined ? { host, port, path } : { user, host, port, path };
}

/** Whether `url` is an SSH remote that sshAdvertisedHead() can ask. */
export function isSshRemote(url: string): boolean {
  return parseSshRemote(url) !== null;
}

/** git's quoting of the path for the remote shell: single quotes, `'` as `'\''`. */
export function quotePath(path: string): string {
  return `'${path.replace(/'/g, `'\\''`)}'`;
}

/** The key files OpenSSH would try, in the order tried here. */
const IDENTITY_FILES = ["id_ed25519", "id_ecdsa", "id_rsa"];

/**
 * The commit `refs/heads/<branch>` points at on the ssh remote `url`, asked as `account`. Throws
 * UnsupportedRemote when git should be asked instead, RemoteTimeout when the server does not
 * answer within `timeoutMs`, and an Error when the server answered that it has no such branch.
 */
export async function sshAdvertisedHead(url: string, branch: string, account: SshAccount, o: SshRefsOptions): Promise<string> {
  const r = parseSshRemote(url);
  if (r === null) throw new UnsupportedRemote("it is not an ssh remote");
  const ssh = `${account.home}/.ssh`;
  // Whoever owns it, a ~/.ssh/config may change the host, port, key or user: ssh's business.
  if (await lstat(`${ssh}/config`).then(() => true, () => false)) {
    throw new UnsupportedRemote(`"${ssh}/config" exists, and only ssh reads it`);
  }
  for (const f of [`${account.home}/.gitconfig`, ...(o.checkout !== undefined ? [`${o.checkout}/.git/config`] : [])]) {
    const text = await ownFile(f, account.uid, 1024 * 1024);
    if (text !== null && /sshcommand/i.test(text)) throw new UnsupportedRemote(`"${f}" may set core.sshCommand`);
  }
  const hostKeys = await knownHostKeys(r, account, o.knownHosts ?? [`${ssh}/known_hosts`, "/etc/ssh/ssh_known_hosts"]);
  if (hostKeys.text === "") throw new UnsupportedRemote(`no known_hosts line names "${hostKeyName(r.host, r.port)}"`);
  const identities: string[] = [];
  for (const f of IDENTITY_FILES) {
    const text = await userFile(`${ssh}/${f}`, account.uid, 64 * 1024, true);
    if (text !== null) identities.push(text);
  }
  if (identities.length === 0) throw new UnsupportedRemote(`no usable key in "${ssh}"`);
  const user = r.user ?? account.name;
  const login: SshLogin = { uid: account.uid, host: r.host, port: r.port, user, credentials: [hostKeys.text, ...identities].join("\0") };
  // Keys are parsed only when a connection is made: a kept one was made with these very texts.
  const connect: Connect = (timeoutMs) => {
    const keys: ParsedKey[] = [];
    for (const text of identities) {
      const parsed: unknown = utils.parseKey(text);
      const key = (Array.isArray(parsed) ? parsed[0] : parsed) as ParsedKey | Error | undefined;
      if (key !== undefined && !(key instanceof Error) && key.isPrivateKey()) keys.push(key);
    }
    if (keys.length === 0) return Promise.reject(new UnsupportedRemote(`no usable key in "${ssh}"`));
    return connectTo(r, { user, keys, hostKeys, timeoutMs });
  };
  const want = `refs/heads/${branch}`;
  const max = o.maxBytes ?? 4 * 1024 * 1024;
  const id = await (o.connections ?? sshConnections).exec(login, {
    connect, command: `git-upload-pack ${quotePath(r.path)}`, env: { GIT_PROTOCOL: "version=2" }, timeoutMs: o.timeoutMs,
    talk: (ch) => converse(ch, want, max),
  });
  if (id === null) throw new Error(`Cannot find branch "${branch}" on the remote`);
  return id;
}

/**
 * A file's text when it may be used: a regular file (not a symlink), owned by `uid` and, for a
 * `secret`, readable by its owner and by nobody else. Null when missing or refused.
 * Read through one descriptor opened with O_NOFOLLOW, so the checks and the read see one file.
 */
async function userFile(path: string, uid: number, max: number, secret: boolean): Promise<string | null> {
  let fh;
  try {
    fh = await open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  } catch {
    return null;
  }
  try {
    const st = await fh.stat();
    if (!st.isFile() || st.size > max) return null;
    if (st.uid !== uid) return null;
    if (secret && ((st.mode & 0o077) !== 0 || (st.mode & 0o400) === 0)) return null;
    return await fh.readFile("utf8");
  } catch {
    return null;
  } finally {
    await fh.close();
  }
}

/** The known_hosts lines that name the remote's host, from files owned by the user or by root. */
async function knownHostKeys(r: SshRemote, account: SshAccount, files: string[]): Promise<{ text: string; algos: string[] }> {
  const lines: string[] = [];
  const algos: string[] = [];
  for (const f of files) {
    const text = await ownFile(f, account.uid, 4 * 1024 * 1024);
    if (text === null) continue;
    for (const line of linesNaming(text, r.host, r.port)) {
      lines.push(line);
      const fields = line.split(/[ \t]+/);
      if (!fields[0]!.startsWith("@") && fields[1] !== undefined && !algos.includes(fields[1])) algos.push(fields[1]);
    }
  }
  return { text: lines.join("\n"), algos };
}

/** A file of the user's or root's (see userFile). */
async function ownFile(path: string, uid: number, max: number): Promise<string | null> {
  return (await userFile(path, uid, max, false)) ?? (uid === 0 ? null : await userFile(path, 0, max, false));
}

/** The host key algorithms to offer: those of the known keys, so the server shows a key we can check. */
function hostKeyAlgorithms(known: string[]): ServerHostKeyAlgorithm[] {
  const out: ServerHostKeyAlgorithm[] = [];
  for (const a of known) {
    if (a === "ssh-rsa") out.push("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa");
    else out.push(a as ServerHostKeyAlgorithm);
  }
  return out;
}

interface Login {
  user: string;
  keys: ParsedKey[];
  hostKeys: { text: string; algos: string[] };
  timeoutMs: number;
}

/** A connection to the remote's server, its host key checked against known_hosts, logged in with one of the keys. */
function connectTo(r: SshRemote, o: Login): Promise<Client> {
  const conn = new Client();
  return new Promise<Client>((resolve, reject) => {
    let settled = false;
    let hostKeyProblem: string | undefined;
    const done = (e: Error | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      conn.removeListener("error", onError);
      conn.removeListener("close", onClose);
      if (e) {
        conn.on("error", () => {}); // late errors of a connection given up on
        conn.end();
        reject(e);
      } else resolve(conn);
    };
    const timer = setTimeout(() => done(new RemoteTimeout("Cannot ask the remote for its branches: it did not answer in time")), o.timeoutMs);
    const onError = (e: Error & { level?: string }): void => {
      if (hostKeyProblem !== undefined) return done(new UnsupportedRemote(hostKeyProblem));
      if (e.level === "client-authentication") return done(new UnsupportedRemote("the server accepts none of the user's keys"));
      done(new UnsupportedRemote(`the SSH connection failed: ${e.message}`));
    };
    const onClose = (): void => done(new UnsupportedRemote("the SSH connection closed before git answered"));
    conn.on("error", onError);
    conn.on("close", onClose);
    conn.on("ready", () => done(null));
    const algorithms: Algorithms = { serverHostKey: hostKeyAlgorithms(o.hostKeys.algos) };
    const auth: PublicKeyAuthMethod[] = o.keys.map((key) => ({ type: "publickey", username: o.user, key }));
    conn.connect({
      host: r.host,
      port: r.port,
      username: o.user,
      authHandler: auth,
      algorithms,
      readyTimeout: o.timeoutMs,
      hostVerifier: (blob: Buffer): boolean => {
        const verdict = matchHostKey(o.hostKeys.text, { host: r.host, port: r.port, algo: blobType(blob), blob });
        if (verdict.status === "known") return true;
        hostKeyProblem = `the host key of "${hostKeyName(r.host, r.port)}" is ${verdict.status === "unknown" ? "not known" : verdict.status}`;
        return false;
      },
    });
    conn.setNoDelay(true); // small packets: do not wait for the server's delayed ACKs
  });
}

/** A pkt-line holding `text`. */
function pkt(text: string): string {
  return (Buffer.byteLength(text) + 4).toString(16).padStart(4, "0") + text;
}

/**
 * Talks to git-upload-pack on `ch`: reads its first answer up to a flush; for protocol v2 sends
 * `ls-refs` for `want` and reads that answer; then ends the conversation. The id `want` points
 * at, or null when the server does not have it.
 */
async function converse(ch: ClientChannel, want: string, max: number): Promise<string | null> {
  const reader = pktReader(ch, max);
  let stderr = "";
  ch.stderr.on("data", (d: Buffer) => {
    if (stderr.length < 4096) stderr += d.toString("utf8");
  });
  try {
    const first = await reader.untilFlush();
    if (first[0] === "version 2\n") {
      if (!first.some((l) => /^ls-refs(=|\n)/.test(l))) throw new UnsupportedRemote("it offers no ls-refs");
      ch.write(pkt("command=ls-refs\n") + "0001" + pkt(`ref-prefix ${want}\n`) + "0000");
      return pick(await reader.untilFlush(), want);
    }
    // v0: the advertisement ends with a flush; a flush back says we want nothing.
    ch.write("0000");
    return pick(first, want);
  } catch (e) {
    if (e instanceof UnsupportedRemote && stderr.trim() !== "") {
      throw new UnsupportedRemote(`${e.message} (${stderr.trim().split("\n")[0]})`);
    }
    throw e;
  } finally {
    ch.end();
  }
}

/** Reads pkt-lines from a channel, one flush-terminated group at a time. */
function pktReader(ch: ClientChannel, max: number): { untilFlush(): Promise<string[]> } {
  let buf: Buffer = Buffer.alloc(0);
  let total = 0;
  let ended = false;
  let wake: (() => void) | null = null;
  ch.on("data", (d: Buffer) => {
    total += d.length;
    buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
    wake?.();
  });
  ch.on("close", () => {
    ended = true;
    wake?.();
  });
  return {
    async untilFlush(): Promise<string[]> {
      const lines: string[] = [];
      for (;;) {
        while (buf.length >= 4) {
          const head = buf.subarray(0, 4).toString("latin1");
          if (!/^[0-9a-f]{4}$/.test(head)) throw new UnsupportedRemote("its answer is not made of pkt-lines");
          const len = parseInt(head, 16);
          if (len < 4) {
            buf = buf.subarray(4);
            if (len === 0) return lines;
            continue; // a delimiter or response-end packet
          }
          if (buf.length < len) break;
          lines.push(buf.subarray(4, len).toString("utf8"));
          buf = buf.subarray(len);
        }
        if (total > max) throw new UnsupportedRemote(`its answer is larger than ${max} bytes`);
        if (ended) throw new UnsupportedRemote("git-upload-pack ended before it answered");
        await new Promise<void>((resolve) => (wake = resolve));
        wake = null;
      }
    },
  };
}

/** The id on the line `<id> <want>` (v0 lines carry capabilities after a NUL). */
function pick(lines: string[], want: string): string | null {
  for (const line of lines) {
    const m = /^([0-9a-f]{40}|[0-9a-f]{64}) ([^\0 \n]+)/.exec(line);
    if (m && m[2] === want) return m[1]!;
  }
  return null;
}
