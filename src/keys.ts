/** Public keys in authorized_keys format, as teams commit them in their repository's `ssh/` folder. */

import { createHash } from "node:crypto";
import { constants as fsc } from "node:fs";
import { lstat, open, readdir } from "node:fs/promises";
import { join } from "node:path";

/** One public key: its type, its SSH wire blob and the comment after it. */
export interface PublicKey {
  algo: string;
  blob: Buffer;
  comment: string;
}

/** Key types whose signatures the SSH server can verify, with the number of fields after the type. */
const KEY_FIELDS: ReadonlyMap<string, number> = new Map([
  ["ssh-ed25519", 1],
  ["ssh-rsa", 2],
  ["ecdsa-sha2-nistp256", 2],
  ["ecdsa-sha2-nistp384", 2],
  ["ecdsa-sha2-nistp521", 2],
]);

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/** Parses authorized_keys text; blank lines, comments, unsupported key types and garbage are skipped. */
export function parseAuthorizedKeys(text: string): PublicKey[] {
  const keys: PublicKey[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.replace(/\r$/, "").trim();
    if (line === "" || line.startsWith("#")) continue;
    // As OpenSSH does: try the line as a key, and failing that skip the options field first.
    const key = parseKeyFields(line) ?? parseKeyFields(skipOptions(line));
    if (key) keys.push(key);
  }
  return keys;
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

/** Skips an authorized_keys options field (commas, double-quoted values with spaces) and the blanks after it. */
function skipOptions(s: string): string {
  let quoted = false;
  let i = 0;
  for (; i < s.length; i++) {
    const c = s[i]!;
    if (!quoted && (c === " " || c === "\t")) break;
    if (c === "\\" && quoted && s[i + 1] === '"') i++;
    else if (c === '"') quoted = !quoted;
  }
  return s.slice(i).trimStart();
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

/** The key type embedded at the start of an SSH public key blob, or "" when there is none. */
export function blobType(blob: Buffer): string {
  if (blob.length < 4) return "";
  const n = blob.readUInt32BE(0);
  if (n === 0 || n > 64 || 4 + n > blob.length) return "";
  return blob.subarray(4, 4 + n).toString("latin1");
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
    if (isCode(e, "ENOENT") || isCode(e, "ENOTDIR")) return [];
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
    if (text !== undefined) keys.push(...parseAuthorizedKeys(text));
  }
  return keys;
}

/** Reads a small regular file without following a symlink; undefined (with a warning) otherwise. */
async function readKeyFile(path: string, maxBytes: number, warn: (m: string) => void): Promise<string | undefined> {
  let fh;
  try {
    // O_NOFOLLOW refuses a symlink; O_NONBLOCK keeps a FIFO from blocking the open.
    fh = await open(path, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  } catch (e) {
    warn(`Skipping "${path}": ${isCode(e, "ELOOP") ? "a symlink (symlinks are not followed)" : errText(e)}`);
    return undefined;
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) {
      warn(`Skipping "${path}": not a regular file`);
      return undefined;
    }
    if (st.size > maxBytes) {
      warn(`Skipping "${path}": larger than ${maxBytes} bytes`);
      return undefined;
    }
    // Read one byte more than allowed so a file that grew since fstat is still caught.
    const buf = Buffer.alloc(maxBytes + 1);
    let len = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, len, buf.length - len, len);
      if (bytesRead === 0) break;
      len += bytesRead;
      if (len > maxBytes) {
        warn(`Skipping "${path}": larger than ${maxBytes} bytes`);
        return undefined;
      }
    }
    return buf.subarray(0, len).toString("utf8");
  } catch (e) {
    warn(`Skipping "${path}": ${errText(e)}`);
    return undefined;
  } finally {
    await fh.close();
  }
}

/** Whether two keys are the same key (same type and blob); comments do not matter. */
export function keysEqual(a: { algo: string; blob: Buffer }, b: { algo: string; blob: Buffer }): boolean {
  return a.algo === b.algo && a.blob.equals(b.blob);
}

/** The OpenSSH SHA256 fingerprint of a key blob: `SHA256:` and unpadded base64. */
export function fingerprint(blob: Buffer): string {
  return `SHA256:${createHash("sha256").update(blob).digest("base64").replace(/=+$/, "")}`;
}

function isCode(e: unknown, code: string): boolean {
  return typeof e === "object" && e !== null && (e as { code?: unknown }).code === code;
}

function errText(e: unknown): string {
  if (typeof e === "object" && e !== null && typeof (e as { code?: unknown }).code === "string") {
    return (e as { code: string }).code;
  }
  return e instanceof Error ? e.message : String(e);
}
