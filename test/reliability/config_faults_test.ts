/**
 * The config file deleted, then replaced with garbage, while pgod runs: pgod keeps running on the
 * last good config (services polled and deployed, SSH answering), says what is wrong, and exits 2
 * only once the file holds a valid change. Run `bash scripts/build.sh` first.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFile, rm, writeFile } from "node:fs/promises";
import { containersOf, lsRemote, preflight, runningOf, scenario, statusOf, sweepRun, waitFor } from "../e2e/harness.ts";
import { serve, version, versionOf } from "./faults.ts";
import type { Served } from "./faults.ts";

beforeAll(() => preflight());
afterAll(sweepRun);

/** Checks pgod still works on its old config: another poll of the remote, and SSH answers. */
async function stillServing(s: Served): Promise<void> {
  await s.pg.waitForLog(lsRemote(s.pg.dir, s.name), { since: s.pg.log().length });
  expect((await statusOf(s))["service"]).toBe(s.name);
  expect(s.pg.exitCode).toBeNull();
}

describe("config file faults", () => {
  test.concurrent("a config file deleted and then replaced with garbage leaves pgod running on the last good config", async () => {
    await scenario("config faults", async (env) => {
      const s = await serve(env, "cfg");
      const { pg, name } = s;
      const good = await readFile(pg.config, "utf8");

      let since = pg.log().length;
      await rm(pg.config);
      const [gone] = await pg.waitForLog(/error msg="config file unreadable, keeping the running config"/, { since });
      expect(gone).toContain("ENOENT");
      await stillServing(s);
      // A new commit is still deployed while the file is missing.
      await s.repo.commit({ "compose.yaml": version(2) }, "version 2 without a config file");
      const [c2] = await waitFor(
        "the container of version 2",
        () => containersOf(name),
        (cs) => cs.length === 1 && cs[0]!.state === "running" && cs[0]!.id !== s.first.id,
        { timeoutMs: 60_000 },
      );
      expect(await versionOf(c2!.id)).toBe("2");

      since = pg.log().length;
      await writeFile(pg.config, "\u0000\u00ff[[services]\nname = = \"\n");
      await pg.waitForLog(/error msg="config file changed but is invalid, keeping the running config"/, { since });
      // Every problem is reported with its place in the file.
      expect(pg.lines(new RegExp(`error msg=.*${pg.config.replaceAll(".", "\\.")}:\\d+: `), since).length).toBeGreaterThanOrEqual(1);
      await stillServing(s);
      expect((await runningOf(name)).map((c) => c.id)).toEqual([c2!.id]);

      // The old bytes back: nothing to restart for.
      since = pg.log().length;
      await writeFile(pg.config, good);
      await pg.waitForLog(/msg="config file is back to the running config"/, { since });
      await stillServing(s);

      // Only a valid change ends pgod, with status 2, and leaves the service running.
      await writeFile(pg.config, `# a valid change\n${good}`);
      const code = await pg.exitedWithin(15_000);
      expect(code).toBe(2);
      expect((await runningOf(name)).map((c) => c.id)).toEqual([c2!.id]);
    });
  });
});
