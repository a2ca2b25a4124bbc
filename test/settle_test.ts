import { expect, test } from "bun:test";
import type { ContainerInfo } from "../src/containers.ts";
import { ManualClock } from "../src/scheduler.ts";
import { waitSettled } from "../src/settle.ts";

const web = (state = "running", health = "", id = "c1"): ContainerInfo => ({ id, project: "p", service: "web", state, health, workingDir: "" });

test("waitSettled() calls a container missing after up, or one seen before and gone, removed at once", async () => {
  const clock = new ManualClock(0);
  const missing = await waitSettled({ project: "p", expected: ["web"], containers: { ofProject: async () => [], all: async () => [] }, clock, timeoutMs: 120_000 });
  expect(missing).toEqual({ state: "gone", why: 'the container of "web" was removed during the deploy' });
  let polls = 0;
  const p = waitSettled({
    project: "p", expected: [], clock, timeoutMs: 120_000, settleMs: 10_000, pollMs: 500,
    containers: { ofProject: async () => (polls++ === 0 ? [web("running", "starting")] : []), all: async () => [] },
  });
  while (clock.waiting === 0) await Bun.sleep(1);
  clock.advance(500);
  expect(await p).toEqual({ state: "gone", why: "container c1 was removed during the deploy" });
  expect(clock.now()).toBe(500);
});

test("waitSettled() ends at once when aborted, even while the engine has not answered", async () => {
  const ac = new AbortController();
  const p = waitSettled({
    project: "p", expected: ["web"], clock: new ManualClock(0), timeoutMs: 120_000, signal: ac.signal,
    containers: { ofProject: () => new Promise<ContainerInfo[]>(() => {}), all: async () => [] },
  });
  ac.abort();
  expect(await Promise.race([p, Bun.sleep(1000).then(() => "still waiting")])).toEqual({ state: "aborted", why: "pgod is stopping" });
});

test("waitSettled() is ready after the settle time and fails on an exited or unhealthy container", async () => {
  const clock = new ManualClock(0);
  const ready = waitSettled({ project: "p", expected: ["web"], clock, timeoutMs: 120_000, settleMs: 1000, pollMs: 500, containers: { ofProject: async () => [web()], all: async () => [] } });
  for (let i = 0; i < 2; i++) {
    while (clock.waiting === 0) await Bun.sleep(1);
    clock.advance(500);
  }
  expect(await ready).toEqual({ state: "ready" });
  const exited = await waitSettled({ project: "p", expected: ["web"], clock, timeoutMs: 120_000, containers: { ofProject: async () => [web("exited")], all: async () => [] } });
  expect(exited).toEqual({ state: "failed", why: 'container of "web" exited' });
});
