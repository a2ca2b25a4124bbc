/**
 * Waiting for a condition with a deadline, for the tests and the benchmark (no bun:test here).
 * A wait polls; it never sleeps a fixed time in the hope that something has happened.
 */

/** Options of a wait. */
export interface WaitOptions {
  /** Give up after this long (default 120 s). */
  timeoutMs?: number;
  /** Pause between probes (default 200 ms). */
  intervalMs?: number;
  /**
   * Treat a probe that throws as "not yet" and keep polling (default true: an engine or server
   * may answer with an error while it starts). False ends the wait with the probe's error.
   */
  retryErrors?: boolean;
}

/** Thrown by a probe to end a wait at once, also when errors are retried (what it waits for cannot come any more). */
export class GiveUp extends Error {
  override readonly name = "GiveUp";
}

/**
 * Polls `probe` until `ok` accepts its value, and returns that value. On timeout it throws with
 * `what` and the last value (or error) seen, so a failure says what the test was looking at.
 */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T> | T,
  ok: (v: T) => boolean,
  o: WaitOptions = {},
): Promise<T> {
  const timeoutMs = o.timeoutMs ?? 120_000;
  const deadline = Date.now() + timeoutMs;
  let last = "nothing yet";
  for (;;) {
    try {
      const v = await probe();
      if (ok(v)) return v;
      last = typeof v === "string" ? v : JSON.stringify(v);
    } catch (e) {
      if (e instanceof GiveUp || o.retryErrors === false) throw e;
      last = `error: ${e instanceof Error ? e.message : String(e)}`;
    }
    if (Date.now() > deadline) {
      throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}; last seen: ${String(last).slice(-2000)}`);
    }
    await Bun.sleep(o.intervalMs ?? 200);
  }
}

/**
 * Checks that `ok(probe())` keeps holding for `ms`, polling every `intervalMs`; throws at once when
 * it stops holding. For asserting that something does NOT happen within a window (with a real
 * process on the other side there is no clock to advance).
 */
export async function holdsFor<T>(what: string, ms: number, probe: () => Promise<T> | T, ok: (v: T) => boolean, intervalMs = 100): Promise<void> {
  const until = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (!ok(v)) throw new Error(`Expected ${what} for ${ms} ms, but saw: ${JSON.stringify(v)}`);
    if (Date.now() >= until) return;
    await Bun.sleep(intervalMs);
  }
}

/** Polls `probe` until it returns something other than undefined, and returns that. */
export function waitForValue<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, o: WaitOptions = {}): Promise<T> {
  return waitFor(what, probe, (v) => v !== undefined, o) as Promise<T>;
}
