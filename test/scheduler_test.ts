import { expect, test } from "bun:test";
import { jitter, ManualClock, Mutex, realClock, Semaphore } from "../src/scheduler.ts";

test("ManualClock wakes a sleeper only when time reaches it, and an abort wakes it early", async () => {
  const clock = new ManualClock(1000);
  let woke = 0;
  void clock.sleep(50).then(() => woke++);
  const ac = new AbortController();
  let aborted = false;
  void clock.sleep(10_000, ac.signal).then(() => (aborted = true));
  expect(clock.waiting).toBe(2);
  clock.advance(49);
  await Promise.resolve();
  expect(woke).toBe(0);
  clock.advance(1);
  await Promise.resolve();
  expect(woke).toBe(1);
  expect(clock.now()).toBe(1050);
  ac.abort();
  await Promise.resolve();
  expect(aborted).toBe(true);
  expect(clock.waiting).toBe(0);
});

test("realClock.sleep returns at once for an aborted signal and early when aborted", async () => {
  const done = new AbortController();
  done.abort();
  const t0 = performance.now();
  await realClock.sleep(60_000, done.signal);
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 10);
  await realClock.sleep(60_000, ac.signal);
  expect(performance.now() - t0).toBeLessThan(5_000);
});

test("Semaphore lets at most its limit run at once, in arrival order, and frees a slot after a throw", async () => {
  const sem = new Semaphore(2);
  let running = 0;
  let peak = 0;
  const order: number[] = [];
  const gates: (() => void)[] = [];
  const job = (i: number): Promise<void> =>
    sem.run(async () => {
      running++;
      peak = Math.max(peak, running);
      order.push(i);
      await new Promise<void>((r) => gates.push(r));
      running--;
      if (i === 0) throw new Error("boom");
    });
  const all = [0, 1, 2, 3].map((i) => job(i).catch((e: Error) => e.message));
  await Bun.sleep(0);
  expect(order).toEqual([0, 1]);
  gates.shift()!();
  await Bun.sleep(0);
  expect(order).toEqual([0, 1, 2]);
  while (gates.length > 0 || order.length < 4) {
    gates.shift()?.();
    await Bun.sleep(0);
  }
  expect(await Promise.all(all)).toEqual(["boom", undefined, undefined, undefined]);
  expect(peak).toBe(2);
  expect(sem.inUse).toBe(0);
});

test("Mutex is locked while held and free after", async () => {
  const m = new Mutex();
  let seen = false;
  await m.run(async () => {
    seen = m.locked;
  });
  expect([seen, m.locked]).toEqual([true, false]);
});

test("jitter() adds up to half the interval, as the original pgod polls", () => {
  expect(jitter(1000, () => 0)).toBe(1000);
  expect(jitter(1000, () => 0.999)).toBe(1499);
  expect(jitter(1000, () => 0.5)).toBe(1250);
});
