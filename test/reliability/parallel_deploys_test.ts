/**
 * Twenty services deploying at once on this 2-core machine: all converge, and no more than four
 * `docker compose up` run at the same time (pgod's deploy slots). The overlap is measured
 * outside pgod, by a `docker` wrapper first on its PATH that notes when each `up` starts and
 * ends. Run `bash scripts/build.sh` first.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  composeFile, configText, containersOf, Pgod, preflight, run, RUN_PREFIX, scenario, sweepRun, uniqueName, waitFor,
} from "../e2e/harness.ts";

beforeAll(() => preflight());
afterAll(sweepRun);

const SERVICES = 20;
/** pgod's default number of deploy slots. */
const SLOTS = 4;

/** The largest number of intervals open at once, from start/end events. */
function maxInFlight(events: Array<{ at: number; delta: 1 | -1 }>): number {
  // At equal times an end goes first: a slot freed and taken in the same instant is not an overlap.
  const sorted = [...events].sort((a, b) => a.at - b.at || a.delta - b.delta);
  let now = 0;
  let max = 0;
  for (const e of sorted) {
    now += e.delta;
    max = Math.max(max, now);
  }
  return max;
}

describe("many services at once", () => {
  test.concurrent("20 services deploying at once all converge with at most 4 compose up in flight", async () => {
    await scenario("twenty services", async (env) => {
      const realDocker = Bun.which("docker");
      if (!realDocker) throw new Error("Cannot find docker on PATH");
      const wrap = await env.tempDir();
      const record = join(wrap, "ups.log");
      await writeFile(record, "");
      // `date +%s%N` stamps in ns; one line per event, appended (short writes do not interleave).
      // It names no compose plugin in `docker info`, so pgod calls `docker compose` through it.
      await writeFile(
        join(wrap, "docker"),
        `#!/bin/sh
[ "$1" = info ] && exit 0
case " $* " in *" up "*) up=1 ;; *) up= ;; esac
[ -n "$up" ] && echo "start $(date +%s%N) $$" >> ${record}
${realDocker} "$@"
rc=$?
[ -n "$up" ] && echo "end $(date +%s%N) $$ $rc" >> ${record}
exit $rc
`,
        { mode: 0o755 },
      );
      const repo = await env.repo({ "compose.yaml": composeFile() });
      const names = Array.from({ length: SERVICES }, (_, i) => uniqueName(`many${i}`));
      const started = Date.now();
      // Started by hand rather than with env.pgod(), which would bring the twenty projects down
      // one `docker compose down` each at cleanup: one `docker rm` of them all is much cheaper.
      const paths = env.paths();
      await writeFile(paths.config, configText(names.map((name) => ({ name, repository: repo.bare }))));
      env.defer(async () => {
        const ids = await run(["docker", "ps", "--all", "--quiet", "--filter", `name=${RUN_PREFIX}many`]);
        const list = ids.stdout.split("\n").filter(Boolean);
        if (list.length > 0) await run(["docker", "rm", "--force", ...list]);
      });
      // No poll after the first cycle: twenty idle cycles every 2 s would only slow the deploys down.
      const pg = Pgod.start({ ...paths, env: { ...process.env, PATH: `${wrap}:${process.env["PATH"] ?? "/usr/bin:/bin"}` }, args: ["-t", "10m"] });
      env.pgods.push(pg);
      await waitFor(
        `${SERVICES} projects with one running container each`,
        async () => (await Promise.all(names.map((n) => containersOf(n)))).map((cs) => cs.filter((c) => c.state === "running").length),
        (counts) => counts.every((n) => n === 1),
        { timeoutMs: 240_000, intervalMs: 1000 },
      );
      await pg.waitForLog(/msg=deployed service=/, { count: SERVICES, timeoutMs: 60_000 });
      const took = Date.now() - started;

      const events = (await readFile(record, "utf8")).split("\n").filter(Boolean).map((l) => {
        const [kind, ns, pid, rc] = l.split(" ");
        return { kind: kind!, at: Number(BigInt(ns!) / 1000n), pid: pid!, rc };
      });
      const starts = events.filter((e) => e.kind === "start");
      const ends = events.filter((e) => e.kind === "end");
      expect(starts.length).toBe(SERVICES);
      expect(ends.length).toBe(SERVICES);
      expect(ends.every((e) => e.rc === "0")).toBe(true);
      const inFlight = maxInFlight(events.map((e) => ({ at: e.at, delta: e.kind === "start" ? 1 : -1 })));
      console.error(`20 services converged in ${took} ms; at most ${inFlight} compose up at once`);
      expect(inFlight).toBeLessThanOrEqual(SLOTS);
      // The bound is reached, not merely respected by deploying one at a time.
      expect(inFlight).toBeGreaterThanOrEqual(2);
      expect(pg.exitCode).toBeNull();
    });
  });
});
