/** Public keys in authorized_keys format, as teams commit them in their repository's `ssh/` folder. */

import { lstat, readdir } from "node:fs/promises";
import { BlockList, isIP } from "node:net";
import { join } from "node:path";
import { errnoCode, FileError } from "./errors.ts";
import { readCapped } from "./files.ts";
import { blobType, fingerprint } from "./ssh_protocol.ts";

export { blobType, fingerprint };

/** One public key: its type, its SSH wire blob, the comment after it, and its line's options. */
export interface PublicKey {
  algo: string;
  blob: Buffer;
  comment: string;
  /** The authorized_keys options pgod enforces; absent when the line has none. */
  options?: KeyOptions;
}

/**
 * What pgod enforces of an authorized_keys line's options. The rest are about features pgod does
 * not offer (a pty, forwarding, an agent, X11, environment variables), so their `no-` forms and
 * `restrict` hold by themselves.
 */
export interface KeyOptions {
  /** `from="pattern-list"`: the client's address must match (addresses and CIDR; no DNS). */
  from?: string[];
  /** `command="..."`: the request pgod runs instead of the client's. */
  command?: string;
  /** `expiry-time="YYYYMMDD[HHMM[SS]][Z]"`: ms since the epoch after which the key is refused. */
  expiresAt?: number;
}

/** Options OpenSSH knows; a line with any other is skipped, as OpenSSH does. */
const KNOWN_OPTIONS = new Set([
  "agent-forwarding", "cert-authority", "command", "environment", "expiry-time", "from", "no-agent-forwarding",
  "no-port-forwarding", "no-pty", "no-touch-required", "no-user-rc", "no-x11-forwarding", "permitlisten", "permitopen",
  "port-forwarding", "principals", "pty", "restrict", "tunnel", "user-rc", "verify-required", "x11-forwarding",
]);

/** Key types whose signatures the SSH server can verify, with the number of fields after the type. */
const KEY_FIELDS: ReadonlyMap<string, number> = new Map([
  ["ssh-ed25519", 1],
  ["ssh-rsa", 2],
  ["ecdsa-sha2-nistp256", 2],
  ["ecdsa-sha2-nistp384", 2],
  ["ecdsa-sha2-nistp521", 2],
]);

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/**
 * Parses authorized_keys text; blank lines, comments, unsupported key types and garbage are
 * skipped, and so are lines whose options cannot be honoured (`cert-authority`: pgod takes no
 * certificates; an unknown option or a malformed value), each told to `warn`.
 */
export function parseAuthorizedKeys(text: string, warn: (message: string) => void = () => {}): PublicKey[] {
  const keys: PublicKey[] = [];
  let n = 0;
  for (const raw of text.split("\n")) {
    n++;
    const line = raw.replace(/\r$/, "").trim();
    if (line === "" || line.startsWith("#")) continue;
    // As OpenSSH does: try the line as a key, and failing that read the options field first.
    const plain = parseKeyFields(line);
    if (plain) {
      keys.push(plain);
      continue;
    }
    const { field, rest } = splitOptions(line);
    const key = parseKeyFields(rest);
    if (!key) continue;
    const options = parseOptions(field);
    if (typeof options === "string") {
      warn(`Skipping the key on line ${n}: ${options}`);
      continue;
    }
    keys.push(Object.keys(options).length > 0 ? { ...key, options } : key);
  }
  return keys;
}

/**
 * The options of one line, or why the line cannot be used. Names are case-insensitive; values
 * are double-quoted, with `\"` for a quote.
 */
export function parseOptions(field: string): KeyOptions | string {
  const out: KeyOptions = {};
  let i = 0;
  while (i < field.length) {
    const m = /^[A-Za-z0-9-]+/.exec(field.slice(i));
    if (!m) return `cannot read its options at "${field.slice(i, i + 20)}"`;
    const name = m[0].toLowerCase();
    i += m[0].length;
    let value: string | undefined;
    if (field[i] === "=") {
      if (field[i + 1] !== '"') return `the value of option "${name}" is not in double quotes`;
      let v = "";
      let j = i + 2;
      for (; j < field.length && field[j] !== '"'; j++) {
        if (field[j] === "\\" && field[j + 1] === '"') j++;
        v += field[j];
      }
      if (j >= field.length) return `the value of option "${name}" has no closing quote`;
      value = v;
      i = j + 1;
    }
    if (i < field.length) {
      if (field[i] !== ",") return `cannot read its options after "${name}"`;
      i++;
    }
    if (!KNOWN_OPTIONS.has(name)) return `unknown option "${name}"`;
    if (name === "cert-authority") return "it is a certificate authority (pgod takes no certificates)";
    if (name === "from") {
      if (value === undefined || value.trim() === "") return 'option "from" needs a pattern list';
      out.from = [...(out.from ?? []), ...value.split(",").map((p) => p.trim()).filter((p) => p !== "")];
    } else if (name === "command") {
      if (value === undefined) return 'option "command" needs a value';
      out.command ??= value;
    } else if (name === "expiry-time") {
      const t = value === undefined ? NaN : expiryTime(value);
      if (Number.isNaN(t)) return `option "expiry-time" is not YYYYMMDD[HHMM[SS]][Z]: "${value ?? ""}"`;
      out.expiresAt = Math.min(out.expiresAt ?? Infinity, t);
    }
  }
  return out;
}

/** `YYYYMMDD[HHMM[SS]]`, in local time, or in UTC with a trailing `Z`; NaN when malformed. */
function expiryTime(v: string): number {
  const m = /^(\d{4})(\d{2})(\d{2})(?:(\d{2})(\d{2})(\d{2})?)?(Z?)$/.exec(v);
  if (!m) return NaN;
  const [y, mo, d, h, mi, se] = [m[1], m[2], m[3], m[4] ?? "0", m[5] ?? "0", m[6] ?? "0"].map(Number) as [number, number, number, number, number, number];
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 59) return NaN;
  return m[7] ? Date.UTC(y, mo - 1, d, h, mi, se) : new Date(y, mo - 1, d, h, mi, se).getTime();
}

/**
 * Whether a key line lets a client in from `ip` at `now`: not expired, and the address matching
 * its `from` patterns (OpenSSH's rule: no negated pattern matches and some other pattern does).
 * Patterns are addresses with `*` and `?`, or CIDR blocks; host names never match (no DNS).
 */
export function keyAllows(key: PublicKey, client: { ip: string; now: number }): boolean {
  const o = key.options;
  if (!o) return true;
  if (o.expiresAt !== undefined && client.now >= o.expiresAt) return false;
  if (o.from === undefined) return true;
  const ip = client.ip.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, "");
  let allowed = false;
  for (const raw of o.from) {
    const negated = raw.startsWith("!");
    const pattern = negated ? raw.slice(1) : raw;
    if (!addressMatches(ip, pattern)) continue;
    if (negated) return false;
    allowed = true;
  }
  return allowed;
}

function addressMatches(ip: string, pattern: string): boolean {
  const slash = pattern.indexOf("/");
  if (slash >= 0) {
    const net = pattern.slice(0, slash);
    const bits = Number(pattern.slice(slash + 1));
    const v = isIP(net);
    if (v === 0 || !/^\d+$/.test(pattern.slice(slash + 1)) || bits > (v === 4 ? 32 : 128)) return false;
    if (isIP(ip) !== v) return false;
    const list = new BlockList();
    list.addSubnet(net, bits, v === 4 ? "ipv4" : "ipv6");
    return list.check(ip, v === 4 ? "ipv4" : "ipv6");
  }
  const re = new RegExp(`^${pattern.toLowerCase().replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".")}$`);
  return re.test(ip.toLowerCase());
}

/** Parses `type base64 [comment]`; undefined unless the blob is a well-formed key of that type. */
function parseKeyFields(s: string): PublicKey | undefined {
  const m = /^(\S+)[ \t]+(\S+)(?:[ \t]+(.*))?$/.exec(s);
  if (!m) return undefined;
  const algo = m[1]!;
  const b64 = m[2]!;
  if (!KEY_FIELDS.has(algo) || !BASE64.test(b64)) return undefined;
  const blob = Buffer.from(b64, "base64");
  if (blobType(blob) !== algo || !wellFormed(blob, algo)) return undefined;
  return { algo, blob, comment: (m[3] ?? "").trim() };
}

/** Splits a line into its options field (commas, double-quoted values with spaces) and the rest. */
function splitOptions(s: string): { field: string; rest: string } {
  let quoted = false;
  let i = 0;
  for (; i < s.length; i++) {
    const c = s[i]!;
    if (!quoted && (c === " " || c === "\t")) break;
    if (c === "\\" && quoted && s[i + 1] === '"') i++;
    else if (c === '"') quoted = !quoted;
  }
  return { field: s.slice(0, i), rest: s.slice(i).trimStart() };
}

/** Reads the SSH strings of a blob; undefined when the blob is truncated. */
function sshStrings(blob: Buffer): Buffer[] | undefined {
  const out: Buffer[] = [];
  let p = 0;
  while (p < blob.length) {
    if (p + 4 > blob.length) return undefined;
    const n = blob.readUInt32BE(p);
    p += 4;
    if (p + n > blob.length) return undefined;
    out.push(blob.subarray(p, p + n));
    p += n;
  }
  return out;
}


function wellFormed(blob: Buffer, algo: string): boolean {
  const parts = sshStrings(blob);
  if (!parts || parts.length !== 1 + KEY_FIELDS.get(algo)!) return false;
  if (algo === "ssh-ed25519") return parts[1]!.length === 32;
  if (algo.startsWith("ecdsa-sha2-")) return parts[1]!.toString("latin1") === algo.slice("ecdsa-sha2-".length);
  return parts.every((p) => p.length > 0);
}

/** Limits on what `readServiceKeys` reads, and where it reports the files it skips. */
export interface ReadKeysOptions {
  /** Files larger than this are skipped (default 64 KiB). */
  maxFileBytes?: number;
  /** At most this many `*.pub` files are read, in name order (default 1000). */
  maxFiles?: number;
  /** Told about each file skipped and why. */
  warn?: (message: string) => void;
}

/** Default `maxFileBytes` of `readServiceKeys`. */
export const MAX_KEY_FILE_BYTES = 64 * 1024;
/** Default `maxFiles` of `readServiceKeys`. */
export const MAX_KEY_FILES = 1000;

/**
 * Reads every key line of every `*.pub` regular file in `<checkoutDir>/ssh/`. Symlinks are
 * never followed (neither a symlinked `ssh` folder nor symlinked files), so a repository cannot
 * point pgod at files outside its checkout. A missing folder gives no keys.
 */
export async function readServiceKeys(checkoutDir: string, opts: ReadKeysOptions = {}): Promise<PublicKey[]> {
  const maxBytes = opts.maxFileBytes ?? MAX_KEY_FILE_BYTES;
  const maxFiles = opts.maxFiles ?? MAX_KEY_FILES;
  const warn = opts.warn ?? (() => {});
  const dir = join(checkoutDir, "ssh");
  try {
    const st = await lstat(dir);
    if (!st.isDirectory()) {
      warn(`Skipping "${dir}": not a directory${st.isSymbolicLink() ? " (symlinks are not followed)" : ""}`);
      return [];
    }
  } catch (e) {
    if (errnoCode(e) === "ENOENT" || errnoCode(e) === "ENOTDIR") return [];
    throw e;
  }
  const names = (await readdir(dir)).filter((n) => n.endsWith(".pub")).sort();
  if (names.length > maxFiles) {
    warn(`Reading only the first ${maxFiles} of ${names.length} key files in "${dir}"`);
    names.length = maxFiles;
  }
  const keys: PublicKey[] = [];
  for (const name of names) {
    const text = await readKeyFile(join(dir, name), maxBytes, warn);
    if (text !== undefined) keys.push(...parseAuthorizedKeys(text, (m) => warn(`${join(dir, name)}: ${m}`)));
  }
  return keys;
}

/** Reads a small regular file without following a symlink (files.ts readCapped); undefined (with a warning) otherwise. */
async function readKeyFile(path: string, maxBytes: number, warn: (m: string) => void): Promise<string | undefined> {
  try {
    return Buffer.from(await readCapped(path, maxBytes)).toString("utf8");
  } catch (e) {
    if (!(e instanceof FileError)) throw e;
    const why = e.problem === "symlink" ? "a symlink (symlinks are not followed)"
      : e.problem === "not a regular file" ? "not a regular file"
      : e.problem === "too large" ? `larger than ${maxBytes} bytes`
      : e.problem === "missing" ? "ENOENT"
      : e.why;
    warn(`Skipping "${path}": ${why}`);
    return undefined;
  }
}

/** Whether two keys are the same key (same type and blob); comments do not matter. */
export function keysEqual(a: { algo: string; blob: Buffer }, b: { algo: string; blob: Buffer }): boolean {
  return a.algo === b.algo && a.blob.equals(b.blob);
}
