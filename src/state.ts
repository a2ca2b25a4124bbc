/**
 * What a service remembers across restarts, in `<dir>/.state/<name>/state.json` (written
 * atomically): the last commit that deployed well, a commit that was rolled back (not retried
 * until a newer one arrives), a pin set by `pgoctl rollback`, and for a service that verifies
 * commits the last verified commit and the commits that verified (what a rollback may go to),
 * and the hold set through pgoctl (`down`/`stop`: nothing brings the service back until `up`).
 */
import { readFileSync } from "node:fs";
import { writeFileAtomic } from "./files.ts";

export interface Pin {
  commit: string;
  /** Hash of the service's config when pinned: a config change releases the pin. */
  config: string;
}

/** Signature verification (`verify = "commits"`): what verified, under which trust root. */
export interface Verified {
  /** The `trust_root` these were verified from: another trust root starts again from it. */
  root: string;
  /** The last verified commit the checkout moved to: the next commit is judged by its keys. */
  last: string;
  /** Commits that verified, newest last (bounded): `pgoctl rollback` may go back to these only. */
  commits: string[];
}

/** Why a service is held down through pgoctl. */
export type Hold = "down" | "stop";

/** How many verified commits are remembered for rollbacks. */
export const MAX_VERIFIED = 200;

export interface ServiceState {
  good?: string;
  bad?: string;
  pin?: Pin;
  verified?: Verified;
  hold?: Hold;
}

const HEX = /^[0-9a-f]{40,64}$/;

/** Reads the state; a missing or damaged file gives an empty state. */
export function readState(file: string): ServiceState {
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(file, "utf8"));
  } catch {
    return {};
  }
  if (typeof v !== "object" || v === null) return {};
  const o = v as Record<string, unknown>;
  const s: ServiceState = {};
  if (typeof o["good"] === "string" && HEX.test(o["good"])) s.good = o["good"];
  if (typeof o["bad"] === "string" && HEX.test(o["bad"])) s.bad = o["bad"];
  const p = o["pin"];
  if (typeof p === "object" && p !== null) {
    const pc = (p as Record<string, unknown>)["commit"];
    const cf = (p as Record<string, unknown>)["config"];
    if (typeof pc === "string" && HEX.test(pc) && typeof cf === "string") s.pin = { commit: pc, config: cf };
  }
  const ver = o["verified"];
  if (typeof ver === "object" && ver !== null) {
    const r = ver as Record<string, unknown>;
    const commits = Array.isArray(r["commits"]) ? r["commits"].filter((c): c is string => typeof c === "string" && HEX.test(c)) : [];
    if (typeof r["root"] === "string" && HEX.test(r["root"]) && typeof r["last"] === "string" && HEX.test(r["last"])) {
      s.verified = { root: r["root"], last: r["last"], commits: commits.slice(-MAX_VERIFIED) };
    }
  }
  if (o["hold"] === "down" || o["hold"] === "stop") s.hold = o["hold"];
  return s;
}

/** Writes the state atomically. */
export async function writeState(file: string, s: ServiceState): Promise<void> {
  await writeFileAtomic(file, `${JSON.stringify(s)}\n`);
}
