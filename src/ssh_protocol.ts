/**
 * What pgod's SSH server and its clients (pgoctl, the in-process git poll) share: the pinned
 * algorithms and the listen-address syntax. Small on purpose: pgoctl loads it at every start.
 */

import type {
  Algorithms,
  CipherAlgorithm,
  CompressionAlgorithm,
  KexAlgorithm,
  MacAlgorithm,
  ServerHostKeyAlgorithm,
} from "ssh2";

/** Key exchange: curve25519 only (ssh2's server has no DH group exchange). */
export const KEX_ALGORITHMS: readonly KexAlgorithm[] = ["curve25519-sha256", "curve25519-sha256@libssh.org"];
/** Ciphers: AES-GCM and AES-CTR (Bun has no chacha20-poly1305). */
export const CIPHER_ALGORITHMS: readonly CipherAlgorithm[] = [
  "aes128-gcm@openssh.com",
  "aes256-gcm@openssh.com",
  "aes128-ctr",
  "aes192-ctr",
  "aes256-ctr",
];
/** MACs, used with the CTR ciphers only (GCM authenticates itself). */
export const MAC_ALGORITHMS: readonly MacAlgorithm[] = [
  "hmac-sha2-256-etm@openssh.com",
  "hmac-sha2-512-etm@openssh.com",
  "hmac-sha2-256",
  "hmac-sha2-512",
];
/** Host key algorithms: pgod has one ed25519 host key. */
export const HOST_KEY_ALGORITHMS: readonly ServerHostKeyAlgorithm[] = ["ssh-ed25519"];
/** Compression: none. */
export const COMPRESSION_ALGORITHMS: readonly CompressionAlgorithm[] = ["none"];

/** The pinned algorithms in the form ssh2's server and client take (fresh arrays each call). */
export function sshAlgorithms(): Algorithms {
  return {
    kex: [...KEX_ALGORITHMS],
    cipher: [...CIPHER_ALGORITHMS],
    hmac: [...MAC_ALGORITHMS],
    serverHostKey: [...HOST_KEY_ALGORITHMS],
    compress: [...COMPRESSION_ALGORITHMS],
  };
}

/** Parses a listen address; a missing host means all addresses. */
export function parseListenAddress(s: string): { host?: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+(?:%[\w.-]+)?)\]|([^:[\]]*)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new Error(`Invalid listen address "${s}": expected ":port", "host:port" or "[ipv6]:port"`);
  }
  const host = m[1] ?? m[2] ?? "";
  return host === "" ? { port } : { host, port };
}

/** The key type embedded at the start of an SSH public key blob, or "" when there is none. */
export function blobType(blob: Buffer): string {
  if (blob.length < 4) return "";
  const n = blob.readUInt32BE(0);
  if (n === 0 || n > 64 || 4 + n > blob.length) return "";
  return blob.subarray(4, 4 + n).toString("latin1");
}

/** The OpenSSH SHA256 fingerprint of a key blob: `SHA256:` and unpadded base64. */
export function fingerprint(blob: Buffer): string {
  return `SHA256:${new Bun.CryptoHasher("sha256").update(blob).digest("base64").replace(/=+$/, "")}`;
}
