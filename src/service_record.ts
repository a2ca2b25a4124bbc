/**
 * The durable record of one service, in `<dir>/.state/<name>/`: state.json (last good commit, a
 * rolled-back one, the pin, the pgoctl hold, the verified commits; one atomic file, see state.ts)
 * and the deploy history (history.ts). An older pgod kept the hold in a file of its own (`hold`):
 * it is read once, folded into state.json at the next write, and removed.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import type { ServiceConfig } from "./config.ts";
import { errorMessage } from "./errors.ts";
import { appendHistory, closeInterrupted, readHistory } from "./history.ts";
import type { HistoryEntry } from "./history.ts";
import type { Logger } from "./log.ts";
import { addVerified, anchorOf, wasVerified } from "./signatures.ts";
import { readState, writeState } from "./state.ts";
import type { Hold, ServiceState } from "./state.ts";

/** What a service remembers across restarts, and the files it keeps them in. */
export class ServiceRecord {
  /** `<dir>/.state/<name>`: the state, the history, the age identity, the secrets manifest. */
  readonly dir: string;
  readonly stateFile: string;
  readonly historyFile: string;
  /** Where an older pgod kept the hold; present until the first write of state.json. */
  private readonly legacyHoldFile: string;
  private legacyHold: boolean;
  private s: ServiceState;

  /** Reads the record of `svc` under `stateRoot` (`<dir>/.state`); a config change releases a pin. */
  constructor(stateRoot: string, private readonly svc: ServiceConfig, private readonly log: Logger) {
    this.dir = join(stateRoot, svc.name);
    this.stateFile = join(this.dir, "state.json");
    this.historyFile = join(this.dir, "history");
    this.legacyHoldFile = join(this.dir, "hold");
    this.s = readState(this.stateFile);
    const legacy = readLegacyHold(this.legacyHoldFile);
    this.legacyHold = legacy !== undefined;
    if (legacy !== undefined && this.s.hold === undefined && legacy !== null) this.s.hold = legacy;
    if (this.s.pin && this.s.pin.config !== configHash(svc)) {
      // A config change releases a pin (the pin is written again without it on the next save).
      log.info("config changed: releasing the pin", { commit: this.s.pin.commit.slice(0, 12) });
      delete this.s.pin;
    }
  }

  /** The state as it is now (read-only: change it with `update`, `setHold`, `pin`). */
  get state(): Readonly<ServiceState> {
    return this.s;
  }

  get hold(): Hold | null {
    return this.s.hold ?? null;
  }

  /** Sets `patch` and drops the keys `drop`; a failed write is logged, never fatal (memory keeps it). */
  async update(patch: Partial<ServiceState>, drop: readonly (keyof ServiceState)[] = []): Promise<void> {
    const next = { ...this.s, ...patch };
    for (const k of drop) delete next[k];
    this.s = next;
    await this.write(next).catch((e: unknown) => this.log.warn("cannot save state", { error: errorMessage(e) }));
  }

  /** Sets or clears the pgoctl hold, durably: a failed write throws and changes nothing. */
  async setHold(hold: Hold | null): Promise<void> {
    if (hold === this.hold) return;
    const next = { ...this.s };
    if (hold === null) delete next.hold;
    else next.hold = hold;
    await this.write(next);
    this.s = next;
    this.log.info(hold ? "held down through pgoctl" : "hold released", { hold: hold ?? "none" });
  }

  /** Folds an older pgod's hold file into state.json now (it is done at any write anyway). */
  async migrate(): Promise<void> {
    if (this.legacyHold) await this.update({});
  }

  /** Pins `commit` to this config: no new commits are pulled until `unpin` or a config change. */
  async pin(commit: string): Promise<void> {
    await this.update({ pin: { commit, config: configHash(this.svc) } });
  }

  async unpin(): Promise<void> {
    await this.update({}, ["pin"]);
  }

  /** The commit new ones are judged from: the last verified one, else `trust_root` (src/signatures.ts). */
  anchor(): string {
    return anchorOf(this.s.verified, this.trustRoot());
  }

  /** Whether a commit may run: without `verify` any; with it, the trust root or one that verified. */
  mayRun(commit: string): boolean {
    return !this.svc.verify || wasVerified(this.s.verified, this.trustRoot(), commit);
  }

  /** Remembers a verified commit the checkout moved to: the next commits are judged by its keys. */
  async markVerified(commit: string): Promise<void> {
    await this.update({ verified: addVerified(this.s.verified, this.trustRoot(), commit) });
  }

  /** Appends to the durable history; a full disk is logged, never fatal. */
  async record(e: HistoryEntry): Promise<void> {
    await appendHistory(this.historyFile, e).catch((err: unknown) => this.log.warn("cannot write history", { error: errorMessage(err) }));
  }

  history(): Promise<HistoryEntry[]> {
    return readHistory(this.historyFile);
  }

  /** Closes the attempts a stopped pgod left open (history.ts); returns them. */
  closeInterrupted(now: number): Promise<HistoryEntry[]> {
    return closeInterrupted(this.historyFile, now);
  }

  private trustRoot(): string {
    // config.ts requires trust_root whenever verify is set.
    if (this.svc.trustRoot === undefined) throw new Error(`Cannot verify commits of "${this.svc.name}": no trust_root`);
    return this.svc.trustRoot;
  }

  private async write(s: ServiceState): Promise<void> {
    await writeState(this.stateFile, s);
    if (this.legacyHold) {
      await rm(this.legacyHoldFile, { force: true });
      this.legacyHold = false;
    }
  }
}

/** An older pgod's hold file: undefined when there is none, null when it holds nothing known. */
function readLegacyHold(file: string): Hold | null | undefined {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "ENOENT" ? undefined : null;
  }
  const h = text.trim();
  return h === "down" || h === "stop" ? h : null;
}

/** A hash of a service's config, to notice that it changed across restarts. */
export function configHash(svc: ServiceConfig): string {
  const canonical = (v: unknown): unknown =>
    Array.isArray(v) ? v.map(canonical)
    : typeof v === "object" && v !== null
    ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, canonical((v as Record<string, unknown>)[k])]))
    : v;
  const { line: _line, ...rest } = svc;
  return createHash("sha256").update(JSON.stringify(canonical(rest))).digest("hex").slice(0, 16);
}
