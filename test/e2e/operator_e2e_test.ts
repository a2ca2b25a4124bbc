/**
 * What an operator relies on, against the real engine: a container removed (`docker rm -f`) at
 * any moment runs again within 30 s with `-t 2s`, whether pgod was waiting for its deploy to turn
 * healthy or not; SIGTERM ends such a wait at once; a stop file present at start keeps the
 * service from ever starting, and pgoctl cannot bring it up. Run `bash scripts/build.sh` first.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  composeExec, containersOf, IMAGE, makeKey, openssh, preflight, run, scenario, sshListening, statusOf, sweepRun, uniqueName, waitFor,
} from "./harness.ts";
import { timeOf } from "../kit/pgod.ts";

beforeAll(() => preflight());
afterAll(sweepRun);

/** A service whose container turns healthy only after `slowS` seconds (so a deploy waits that long). */
function slowHealthy(version: string, slowS = 10): string {
  return `services:
  web:
    image: ${IMAGE}
    pull_policy: never
    stop_signal: SIGKILL
    network_mode: none
    environment:
      VERSION: "${version}"
    command: ["/bin/sh", "-c", "sleep ${slowS}; : > /tmp/ok; exec /bin/httpd -f -p 8080"]
    healthcheck:
      test: ["CMD", "/bin/sh", "-c", "test -f /tmp/ok"]
      interval: 1s
      timeout: 2s
      retries: 3
      start_period: 60s
`;
}

/** Milliseconds until a running container of `name` other than `old` exists. */
async function backWithin(name: string, old: string): Promise<number> {
  const t0 = Date.now();
  await waitFor(`a new running container of ${name}`, () => containersOf(name), (cs) => cs.some((c) => c.id !== old && c.state === "running"), {
    timeoutMs: 90_000,
  });
  return Date.now() - t0;
}

describe("operator safety", () => {
  test.concurrent("a container removed during the wait for health, and after the deploy, runs again within 30 s; SIGTERM ends a wait at once", async () => {
    await scenario("removed", async (env) => {
      const name = uniqueName("removed");
      const repo = await env.repo({ "compose.yaml": slowHealthy("1") });
      const pg = await env.pgod([{ name, repository: repo.bare }]);
      // During the wait: the container exists, pgod waits for it to turn healthy.
      await pg.waitForLog(composeExec(name, "up"), { timeoutMs: 120_000 });
      const [c] = await waitFor("the first container", () => containersOf(name), (cs) => cs.length === 1 && cs[0]!.state === "running", { timeoutMs: 60_000 });
      await run(["docker", "rm", "-f", c!.id]);
      const during = await backWithin(name, c!.id);
      console.log(`removed while pgod waited for health: running again after ${(during / 1000).toFixed(1)} s`);
      expect(during).toBeLessThan(30_000);
      await pg.waitForLog(new RegExp(`msg="deploy failed" service=${name} .*was removed during the deploy: trying again`));
      await pg.waitForLog(new RegExp(`msg=deployed service=${name} `), { timeoutMs: 120_000 });

      // After the deploy: self-healing at the next poll.
      const [d] = await waitFor("the deployed container", () => containersOf(name), (cs) => cs.length === 1 && cs[0]!.state === "running");
      await run(["docker", "rm", "-f", d!.id]);
      const after = await backWithin(name, d!.id);
      console.log(`removed after the deploy: running again after ${(after / 1000).toFixed(1)} s`);
      expect(after).toBeLessThan(30_000);

      // SIGTERM while a wait for health runs (a new commit): pgod exits at once, with status 0.
      await pg.waitForLog(new RegExp(`msg=deployed service=${name} `), { count: 2, timeoutMs: 120_000 });
      const [e] = await waitFor("the healed container", () => containersOf(name), (cs) => cs.length === 1 && cs[0]!.state === "running");
      const since = pg.log().length;
      await repo.commit({ "compose.yaml": slowHealthy("2", 60) }, "version 2");
      await pg.waitForLog(composeExec(name, "up"), { since, timeoutMs: 120_000 });
      await waitFor("the container of version 2", () => containersOf(name), (cs) => cs.some((x) => x.id !== e!.id && x.state === "running"), { timeoutMs: 60_000 });
      const t0 = Date.now();
      expect(await pg.signal("SIGTERM", 30_000)).toBe(0);
      const took = Date.now() - t0;
      console.log(`SIGTERM during a wait for health: pgod exited after ${(took / 1000).toFixed(1)} s`);
      expect(took).toBeLessThan(5_000);
      const [interrupted] = pg.lines(new RegExp(`msg="deploy interrupted" service=${name} `), since);
      const [signalled] = pg.lines(/msg="signal received" signal=SIGTERM/, since);
      const waitEnded = timeOf(interrupted!) - timeOf(signalled!);
      console.log(`SIGTERM during a wait for health: the wait ended after ${waitEnded} ms`);
      expect(waitEnded).toBeLessThan(1_000);
    });
  });

  test.concurrent("a stop file present at start keeps the service down for good, and pgoctl cannot bring it up", async () => {
    await scenario("stopfile", async (env) => {
      const name = uniqueName("stopfile");
      const key = await makeKey(await env.tempDir(0o700), "stopfile");
      const repo = await env.repo({ "compose.yaml": slowHealthy("1", 0), "ssh/stopfile.pub": key.pub });
      const { dir } = env.paths();
      await run(["mkdir", "-p", dir]);
      const stopFile = join(dir, `${name}.stop`);
      await writeFile(stopFile, "");
      const pg = await env.pgod([{ name, repository: repo.bare }]);
      const { port } = await sshListening(pg);
      await pg.waitForLog(new RegExp(`msg="stop file present, bringing the service down" service=${name} `), { timeoutMs: 120_000 });
      const client = { port, key, knownHosts: "/dev/null" };
      for (const cmd of ["up", "start", "restart", "rollback"]) {
        const r = await openssh(client, `${name}//${cmd}`);
        expect([cmd, r.code]).toEqual([cmd, 69]);
        expect(r.stderr).toContain(`the stop file "${stopFile}" exists`);
      }
      // Two more polls later, still nothing was ever created.
      let last = (await statusOf({ name, port, key }))["last poll"];
      for (let i = 0; i < 2; i++) {
        const seen = last;
        last = await waitFor("another poll", async () => (await statusOf({ name, port, key }))["last poll"], (t) => t !== seen, { timeoutMs: 60_000 });
      }
      expect((await statusOf({ name, port, key }))["stop file"]).toContain("present");
      expect(await containersOf(name)).toEqual([]);
      expect(pg.lines(/msg=deploying /)).toEqual([]);
      expect(pg.lines(new RegExp(`docker compose --project-name ${name} .*\\bup\\b`))).toEqual([]);
    });
  });
});
