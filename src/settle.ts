/**
 * The wait after `docker compose up`: poll a project's containers until every expected service
 * runs (and is healthy) for a settle time. `up --detach` returns once each container exists, so a
 * container missing afterwards was removed (`docker rm -f`): that ends the wait at once instead of
 * counting as "not there yet" until the health timeout. Shutdown ends the wait at its next poll.
 */
import { readiness } from "./containers.ts";
import type { Containers } from "./containers.ts";
import type { Clock } from "./scheduler.ts";

/** How a wait ended: ready, failed (exited, unhealthy, too slow), a container removed, or pgod stopping. */
export type Settled =
  | { state: "ready" }
  | { state: "failed"; why: string }
  | { state: "gone"; why: string }
  | { state: "aborted"; why: string };

export interface SettleOptions {
  project: string;
  /** Compose services that must run; empty: every container of the project. */
  expected: readonly string[];
  containers: Containers;
  clock: Clock;
  timeoutMs: number;
  /** How long containers must stay ready (default 2 s). */
  settleMs?: number;
  /** How often the engine is asked (default 500 ms). */
  pollMs?: number;
  /** Aborted when pgod stops. */
  signal?: AbortSignal;
}

/** Waits until the project's containers are ready and stay so, or says why not. */
export async function waitSettled(o: SettleOptions): Promise<Settled> {
  const seen = new Set<string>();
  return settleLoop(o, `not running and healthy after ${Math.round(o.timeoutMs / 1000)}s`, async () => {
    // A busy engine can take seconds to answer: shutdown does not wait for that answer.
    const cs = await untilAborted(o.containers.ofProject(o.project), o.signal);
    if (cs === null) return null;
    const missing = o.expected.find((s) => !cs.some((c) => c.service === s && c.state !== "removing"));
    const vanished = [...seen].find((id) => !cs.some((c) => c.id === id && c.state !== "removing"));
    if (missing !== undefined) return { state: "gone", why: `the container of "${missing}" was removed during the deploy` };
    if (vanished !== undefined) return { state: "gone", why: `container ${vanished.slice(0, 12)} was removed during the deploy` };
    for (const c of cs) seen.add(c.id);
    return readiness(o.expected, cs);
  });
}

/** One look at what is deploying: ready, not yet, failed or removed (and why); null when aborted. */
export type Probe = () => Promise<{ state: "ready" | "waiting" | "failed" | "gone"; why: string } | null>;

/**
 * The wait shared by compose projects and swarm stacks: `probe` until it is ready and stays so
 * for the settle time (a container that exits at once must be seen exiting), fails, or the
 * timeout passes (`timedOut` names it); shutdown ends it at once.
 */
export async function settleLoop(
  o: Pick<SettleOptions, "clock" | "timeoutMs" | "settleMs" | "pollMs" | "signal">,
  timedOut: string,
  probe: Probe,
): Promise<Settled> {
  const deadline = o.clock.now() + o.timeoutMs;
  const settle = o.settleMs ?? 2000;
  let readySince: number | null = null;
  let why = "";
  for (;;) {
    if (o.signal?.aborted) return { state: "aborted", why: "pgod is stopping" };
    const r = await probe();
    if (r === null) return { state: "aborted", why: "pgod is stopping" };
    if (r.state === "failed" || r.state === "gone") return { state: r.state, why: r.why };
    const now = o.clock.now();
    if (r.state === "ready") {
      readySince ??= now;
      if (now - readySince >= settle) return { state: "ready" };
    } else {
      readySince = null;
      why = r.why;
    }
    if (now >= deadline) return { state: "failed", why: `${timedOut}: ${why || "unstable"}` };
    await o.clock.sleep(Math.min(o.pollMs ?? 500, Math.max(1, deadline - now)), o.signal);
  }
}

/** `p`'s value, or null as soon as `signal` aborts (p is left to settle on its own). */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T | null> {
  if (!signal) return p;
  return new Promise<T | null>((resolve, reject) => {
    const stop = (): void => resolve(null);
    signal.addEventListener("abort", stop, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener("abort", stop));
  });
}
