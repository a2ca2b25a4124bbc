/**
 * Counts the long-running commands (`exec`, `logs -f`) that pgoctl clients run at once, per
 * service and per key, so that one team or one key cannot start docker compose children
 * (about 48 MiB each) without bound. Each command holds a slot until it ends; a command that
 * finds no free slot waits for one (a burst of short `exec`s then runs a few at a time) and is
 * refused when none frees up in time.
 */
import { EX, RequestError } from "./errors.ts";
import type { Logger } from "./log.ts";

/** The caps on long-running commands. */
export interface LongRunningLimits {
  /** At once for one service, whichever keys run them. */
  perService: number;
  /** At once for one key, over all services. */
  perKey: number;
  /** How long a command waits for a free slot before it is refused. */
  waitMs: number;
}

/** Default caps: 16 per service (about 800 MiB of compose children at most), 8 per key, 10 s of waiting. */
export const DEFAULT_LONG_RUNNING: Readonly<LongRunningLimits> = { perService: 16, perKey: 8, waitMs: 10_000 };

/** Exit status when a cap is reached (sysexits EX_TEMPFAIL: try again later). */
export const EXIT_TEMPFAIL = EX.tempfail;

/** The slots in use; `take` throws a RequestError when a cap is reached. */
export class LongRunning {
  readonly limits: LongRunningLimits;
  private readonly byService = new Map<string, number>();
  private readonly byKey = new Map<string, number>();
  private readonly waiting = new Set<() => void>();

  constructor(limits: Partial<LongRunningLimits> = {}, private readonly logger?: Logger) {
    this.limits = { ...DEFAULT_LONG_RUNNING, ...limits };
  }

  /** How many run now for this service. */
  running(service: string): number {
    return this.byService.get(service) ?? 0;
  }

  /**
   * Takes a slot for `what` ("exec", "logs -f") of `service` run with `key`, waiting up to
   * `waitMs` for one; returns its release. Throws a RequestError when none frees up in time
   * (or `signal` aborts meanwhile).
   */
  async take(service: string, key: string, what: string, signal?: AbortSignal): Promise<() => void> {
    const deadline = Date.now() + this.limits.waitMs;
    if (this.full(service, key)) this.logger?.debug("waiting for a slot for a long-running command", { service, command: what, key });
    while (this.full(service, key) && !signal?.aborted && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          clearTimeout(timer);
          this.waiting.delete(done);
          signal?.removeEventListener("abort", done);
          resolve();
        };
        const timer = setTimeout(done, Math.max(0, deadline - Date.now()));
        this.waiting.add(done);
        signal?.addEventListener("abort", done, { once: true });
      });
    }
    const s = this.byService.get(service) ?? 0;
    const k = this.byKey.get(key) ?? 0;
    if (s >= this.limits.perService) {
      throw new RequestError(
        EXIT_TEMPFAIL,
        `Cannot run "${what}" for "${service}": ${s} long-running commands ("exec", "logs -f") run for this service, the limit is ${this.limits.perService}${this.waited()}`,
      );
    }
    if (k >= this.limits.perKey) {
      throw new RequestError(
        EXIT_TEMPFAIL,
        `Cannot run "${what}" for "${service}": this key runs ${k} long-running commands ("exec", "logs -f"), the limit is ${this.limits.perKey}${this.waited()}`,
      );
    }
    this.byService.set(service, s + 1);
    this.byKey.set(key, k + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      dec(this.byService, service);
      dec(this.byKey, key);
      // Every waiter looks again; those that still find no room wait on.
      for (const wake of [...this.waiting]) wake();
    };
  }

  private waited(): string {
    return this.limits.waitMs > 0 ? ` (none ended within ${this.limits.waitMs / 1000} s)` : "";
  }

  private full(service: string, key: string): boolean {
    return (this.byService.get(service) ?? 0) >= this.limits.perService || (this.byKey.get(key) ?? 0) >= this.limits.perKey;
  }
}

function dec(m: Map<string, number>, k: string): void {
  const n = (m.get(k) ?? 0) - 1;
  if (n <= 0) m.delete(k);
  else m.set(k, n);
}
