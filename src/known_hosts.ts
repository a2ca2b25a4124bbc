/** OpenSSH known_hosts files: look up a server's host key, and record one on first use. */

import { UsageError } from "./errors.ts";
import { blobType } from "./ssh_protocol.ts";

// No static import of node:crypto or node:fs: pgoctl loads this module at every run, and those
// modules cost it milliseconds to load (bench/README.md). Bun's own hasher and file reader do.

/** A server's host key as seen on the wire, with where it was reached. */
export interface HostKey {
  host: string;
  port: number;
  algo: string;
  blob: Buffer;
}

/**
 * What a known_hosts file says about a host key: `known` (a line holds this key), `unknown` (no
 * line names the host), `changed` (lines name the host, none with this key) or `revoked` (an
 * `@revoked` line holds this key).
 */
export type HostKeyStatus = "known" | "unknown" | "changed" | "revoked";

/** The verdict with the 1-based line it rests on (the first line naming the host for `changed`). */
export interface HostKeyResult {
  status: HostKeyStatus;
  line?: number;
}

/** The name a known_hosts line uses for a host: `host` on port 22, `[host]:port` otherwise. */
export function hostKeyName(host: string, port: number): string {
  const h = host.toLowerCase();
  return port === 22 ? h : `[${h}]:${port}`;
}

/** Checks `key` against known_hosts text. */
export function matchHostKey(text: string, key: HostKey): HostKeyResult {
  const name = hostKeyName(key.host, key.port);
  let known: number | undefined;
  let other: number | undefined;
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === "" || line.startsWith("#")) continue;
    const fields = line.split(/[ \t]+/);
    let marker = "";
    if (fields[0]!.startsWith("@")) marker = fields.shift()!;
    const [hosts, algo, b64] = fields;
    if (hosts === undefined || algo === undefined || b64 === undefined) continue;
    if (!hostsMatch(hosts, name)) continue;
    const same = algo === key.algo && Buffer.from(b64, "base64").equals(key.blob);
    if (marker === "@revoked") {
      if (same) return { status: "revoked", line: i + 1 };
    } else if (marker === "") {
      // Certificate authorities (`@cert-authority`) and unknown markers are ignored: pgod has no certificates.
      if (same) known ??= i + 1;
      else other ??= i + 1;
    }
  }
  if (known !== undefined) return { status: "known", line: known };
  if (other !== undefined) return { status: "changed", line: other };
  return { status: "unknown" };
}

/** Whether a host field (hashed `|1|salt|hmac`, or comma-separated patterns with `*`, `?` and `!`) names `name`. */
function hostsMatch(field: string, name: string): boolean {
  if (field.startsWith("|1|")) {
    const [, , salt, hash] = field.split("|");
    if (salt === undefined || hash === undefined) return false;
    const mac = new Bun.CryptoHasher("sha1", Buffer.from(salt, "base64")).update(name).digest("base64");
    return mac === hash;
  }
  let matched = false;
  for (const raw of field.split(",")) {
    const negated = raw.startsWith("!");
    const pattern = negated ? raw.slice(1) : raw;
    if (!globMatch(pattern.toLowerCase(), name)) continue;
    if (negated) return false;
    matched = true;
  }
  return matched;
}

/** Matches OpenSSH host patterns: `*` any run of characters, `?` exactly one. */
function globMatch(pattern: string, s: string): boolean {
  let p = 0;
  let i = 0;
  let starP = -1;
  let starI = 0;
  while (i < s.length) {
    if (p < pattern.length && (pattern[p] === "?" || pattern[p] === s[i])) {
      p++;
      i++;
    } else if (p < pattern.length && pattern[p] === "*") {
      starP = p++;
      starI = i;
    } else if (starP >= 0) {
      p = starP + 1;
      i = ++starI;
    } else {
      return false;
    }
  }
  while (p < pattern.length && pattern[p] === "*") p++;
  return p === pattern.length;
}

/** Checks `key` against a known_hosts file; a missing file knows no host. */
export async function checkHostKey(file: string, key: HostKey): Promise<HostKeyResult> {
  let text: string;
  try {
    text = await Bun.file(file).text();
  } catch (e) {
    if ((e as { code?: unknown }).code === "ENOENT") return { status: "unknown" };
    throw e;
  }
  return matchHostKey(text, key);
}

/**
 * Appends `key` to a known_hosts file, creating the file (0600) when missing but never its folder:
 * a missing folder (no ~/.ssh yet) fails with ENOENT, and the caller says the key was not recorded.
 */
export async function addHostKey(file: string, key: HostKey): Promise<void> {
  const { appendFile, open } = await import("node:fs/promises");
  let prefix = "";
  try {
    // Keep the new entry on a line of its own when the file does not end with a newline.
    const fh = await open(file, "r");
    try {
      const { size } = await fh.stat();
      if (size > 0) {
        const last = Buffer.alloc(1);
        await fh.read(last, 0, 1, size - 1);
        if (last[0] !== 0x0a) prefix = "\n";
      }
    } finally {
      await fh.close();
    }
  } catch (e) {
    if ((e as { code?: unknown }).code !== "ENOENT") throw e;
  }
  const line = `${prefix}${hostKeyName(key.host, key.port)} ${key.algo} ${key.blob.toString("base64")}\n`;
  await appendFile(file, line, { mode: 0o600 });
}

/** The lines of known_hosts text that name `host` on `port` (markers included), trimmed. */
export function linesNaming(text: string, host: string, port: number): string[] {
  const name = hostKeyName(host, port);
  const out: string[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const fields = line.split(/[ \t]+/);
    const hosts = fields[0]!.startsWith("@") ? fields[1] : fields[0];
    if (hosts !== undefined && hostsMatch(hosts, name)) out.push(line);
  }
  return out;
}

/** Whether a field is an SSH key type name rather than a host pattern. */
function isKeyType(field: string): boolean {
  return /^(ssh-|ecdsa-sha2-|sk-)/.test(field);
}

/**
 * Checks the text of `--host-key`/PGOCTL_HOST_KEY: one or more lines, each a public key
 * (`ssh-ed25519 AAAA... [comment]`) or a known_hosts line (`host ssh-ed25519 AAAA...`). Throws
 * UsageError naming `source` for a line that is neither.
 */
export function parseHostKeyText(text: string, source: string): void {
  let keys = 0;
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const fields = line.split(/[ \t]+/);
    if (fields[0]!.startsWith("@")) fields.shift();
    if (!isKeyType(fields[0] ?? "")) fields.shift();
    const [algo, b64] = fields;
    const blob = b64 === undefined ? Buffer.alloc(0) : Buffer.from(b64, "base64");
    if (algo === undefined || !isKeyType(algo) || blobType(blob) !== algo) {
      throw new UsageError(`Invalid host key in ${source}: expected "ssh-ed25519 AAAA..." or a known_hosts line`);
    }
    keys++;
  }
  if (keys === 0) throw new UsageError(`Invalid host key in ${source}: it holds no key`);
}

/**
 * Checks `key` against the text of `--host-key`/PGOCTL_HOST_KEY (see parseHostKeyText): a bare
 * public key stands for this host; a known_hosts line must also name the host.
 */
export function pinnedHostKey(text: string, key: HostKey): HostKeyResult {
  const name = hostKeyName(key.host, key.port);
  const asKnownHosts = text
    .split(/\r?\n/)
    .map((l) => {
      const t = l.trim();
      return isKeyType(t.split(/[ \t]+/)[0] ?? "") ? `${name} ${t}` : t;
    })
    .join("\n");
  return matchHostKey(asKnownHosts, key);
}
