/** Small concurrency primitives for the reconcile loops: a clock, a mutex, a semaphore. */

/** Time as a parameter, so tests drive the loops without real sleeps. */
export interface Clock {
  now(): number;
  /** Resolves after `ms`, or early (without error) when `signal` aborts. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

/** The wall clock. */
export const realClock: Clock = {
  now: () => Date.now(),
  sleep: (ms, signal) =>
    new Promise((resolve) => {
      if (signal?.aborted) return resolve();
      const t = setTimeout(done, ms);
      function done(): void {
        clearTimeout(t);
        signal?.removeEventListener("abort", done);
        resolve();
      }
      signal?.addEventListener("abort", done, { once: true });
    }),
};

/** A clock that moves only when told, for tests. */
export class ManualClock implements Clock {
  private t: number;
  private sleepers: { at: number; resolve: () => void }[] = [];
  constructor(start = 0) {
    this.t = start;
  }
  now(): number {
    return this.t;
  }
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal?.aborted) return resolve();
      const s = { at: this.t + ms, resolve };
      this.sleepers.push(s);
      signal?.addEventListener("abort", () => {
        this.sleepers = this.sleepers.filter((x) => x !== s);
        resolve();
      }, { once: true });
    });
  }
  /** Moves time forward and wakes every sleeper that is due. */
  advance(ms: number): void {
    this.t += ms;
    const due = this.sleepers.filter((s) => s.at <= this.t);
    this.sleepers = this.sleepers.filter((s) => s.at > this.t);
    for (const s of due) s.resolve();
  }
  /** How many sleepers wait. */
  get waiting(): number {
    return this.sleepers.length;
  }
}

/** At most `limit` holders at once; the rest queue in order. */
export class Semaphore {
  private active = 0;
  private queue: (() => void)[] = [];
  constructor(readonly limit: number) {}
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((r) => this.queue.push(r));
    else this.active++;
    try {
      return await fn();
    } finally {
      const next = this.queue.shift();
      if (next) next();
      else this.active--;
    }
  }
  get inUse(): number {
    return this.active;
  }
}

/** A semaphore of one. */
export class Mutex extends Semaphore {
  constructor() {
    super(1);
  }
  get locked(): boolean {
    return this.inUse > 0;
  }
}

/** `d + random[0, d/2)`, as the original pgod polls. */
export function jitter(ms: number, random: () => number): number {
  return ms + Math.floor(random() * (ms / 2));
}
