/**
 * What a service remembers across restarts, in `<dir>/.state/<name>/state.json` (written
 * atomically): the last commit that deployed well, a commit that was rolled back (not retried
 * until a newer one arrives), and a pin set by `pgoctl rollback`.
 */
import { readFileSync } from "node:fs";
import { writeFileAtomic } from "./files.ts";

export interface Pin {
  commit: string;
  /** Hash of the service's config when pinned: a config change releases the pin. */
  config: string;
}

export interface ServiceState {
  good?: string;
  bad?: string;
  pin?: Pin;
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
  return s;
}

/** Writes the state atomically. */
export async function writeState(file: string, s: ServiceState): Promise<void> {
  await writeFileAtomic(file, `${JSON.stringify(s)}\n`);
}
