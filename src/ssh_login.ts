/**
 * Login rules of pgod's SSH server (ssh_server.ts) that need none of its state: which signatures
 * it refuses, and the throttled warning for a login refused by the connection limits.
 */
import { utils, type PublicKeyAuthContext } from "ssh2";
import type { Logger } from "./log.ts";
import type { SshLimits } from "./ssh_limits.ts";
import type { ClientKey } from "./ssh_session.ts";

/** Why a public-key attempt's signature is refused; "" when it is fine (or absent: a query). */
export function signatureProblem(ctx: PublicKeyAuthContext, key: ClientKey): string {
  // SHA-1 signatures ("ssh-rsa"), refused as OpenSSH 8.8 and later refuse them by default: an
  // RSA key signs with rsa-sha2-256 or rsa-sha2-512, which ssh2 reports as a hash algorithm.
  if (key.algo === "ssh-rsa" && ctx.hashAlgo !== "sha256" && ctx.hashAlgo !== "sha512") return "ssh-rsa (SHA-1) signature";
  if (ctx.signature === undefined) return "";
  const parsed = utils.parseKey(key.blob);
  if (parsed instanceof Error || ctx.blob === undefined || parsed.verify(ctx.blob, ctx.signature, ctx.hashAlgo) !== true) {
    return "bad signature";
  }
  return "";
}

/** Warns that a login was refused by a limit (ssh_limits.ts overLimit). */
export type FullWarner = (which: "key" | "address" | "all", fp: string, addr: string) => void;

/** A FullWarner that warns once a minute per key (or address, or for all). */
export function makeFullWarner(limits: SshLimits, log: Logger): FullWarner {
  const last = new Map<string, number>();
  return (which, fp, addr) => {
    // One warning a minute per key (or address): a client retrying in a loop must not flood the log.
    const id = `${which}|${which === "address" ? addr : which === "key" ? fp : ""}`;
    const now = Date.now();
    if (now - (last.get(id) ?? 0) < 60_000) return;
    if (last.size > 1000) last.clear();
    last.set(id, now);
    const max = which === "key" ? limits.maxPerKey : which === "address" ? limits.maxPerAddress : limits.maxAuthenticated;
    const what = which === "key" ? "this key" : which === "address" ? "this address" : "all keys";
    log.warn(`Refusing SSH login: too many connections logged in with ${what}`, { max, key: fp, addr });
  };
}
