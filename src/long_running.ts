/**
 * Counts the long-running commands (`exec`, `logs -f`) that pgoctl clients run at once, per
 * service and per key, so that one team or one key cannot start docker compose children
 * (about 48 MiB each) without bound. Each command holds a slot until it ends.
 */
import { RequestError } from "./errors.ts";

/** The caps on long-running commands. */
export interface LongRunningLimits {
  /** At once for one service, whichever keys run them. */
  perService: number;
  /** At once for one key, over all services. */
  perKey: number;
}

/** Default caps: 8 per service (about 400 MiB of compose children at most), 4 per key. */
export const DEFAULT_LONG_RUNNING: Readonly<LongRunningLimits> = { perService: 8, perKey: 4 };

/** Exit status when a cap is reached (sysexits EX_TEMPFAIL: try again later). */
export const EXIT_TEMPFAIL = 75;

/** The slots in use; `take` throws a RequestError when a cap is reached. */
export class LongRunning {
  readonly limits: LongRunningLimits;
  private readonly byService = new Map<string, number>();
  private readonly byKey = new Map<string, number>();

  constructor(limits: Partial<LongRunningLimits> = {}) {
    this.limits = { ...DEFAULT_LONG_RUNNING, ...limits };
  }

  /** How many run now for this service. */
  running(service: string): number {
    return this.byService.get(service) ?? 0;
  }

  /** Takes a slot for `what` ("exec", "logs -f") of `service` run with `key`; returns its release. */
  take(service: string, key: string, what: string): () => void {
    const s = this.byService.get(service) ?? 0;
    const k = this.byKey.get(key) ?? 0;
    if (s >= this.limits.perService) {
      throw new RequestError(
        EXIT_TEMPFAIL,
        `Cannot run "${what}" for "${service}": ${s} long-running commands ("exec", "logs -f") run for this service, the limit is ${this.limits.perService}`,
      );
    }
    if (k >= this.limits.perKey) {
      throw new RequestError(
        EXIT_TEMPFAIL,
        `Cannot run "${what}" for "${service}": this key runs ${k} long-running commands ("exec", "logs -f"), the limit is ${this.limits.perKey}`,
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
    };
  }
}

function dec(m: Map<string, number>, k: string): void {
  const n = (m.get(k) ?? 0) - 1;
  if (n <= 0) m.delete(k);
  else m.set(k, n);
}
