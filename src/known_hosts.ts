/** OpenSSH known_hosts files: look up a server's host key, and record one on first use. */

import { createHmac } from "node:crypto";
import { appendFile, mkdir, open, readFile } from "node:fs/promises";
import { dirname } from "node:path";

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
    const mac = createHmac("sha1", Buffer.from(salt, "base64")).update(name).digest("base64");
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
    text = await readFile(file, "utf8");
  } catch (e) {
    if ((e as { code?: unknown }).code === "ENOENT") return { status: "unknown" };
    throw e;
  }
  return matchHostKey(text, key);
}

/** Appends `key` to a known_hosts file, creating its directory (0700) and the file (0600) when missing. */
export async function addHostKey(file: string, key: HostKey): Promise<void> {
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
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
