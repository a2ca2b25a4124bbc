/**
 * The file system under --dir full (a small tmpfs): pgod reports the error, keeps what runs,
 * corrupts nothing it keeps there (checkout, history, state, SSH host key), survives a restart
 * while the disk is still full, and converges once space is freed. Run `bash scripts/build.sh` first.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdir, readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import {
  containersOf, preflight, run, runningOf, scenario, sshListening, statusOf, sweepRun, waitFor, waitRunning,
} from "../e2e/harness.ts";
import { checkoutSound, hashOf, historyOf, serve, version, versionOf } from "./faults.ts";

beforeAll(() => preflight());
afterAll(sweepRun);

/** Bytes free on the file system of `dir`. */
async function freeBytes(dir: string): Promise<number> {
  const r = await run(["df", "--output=avail", "-B1", dir]);
  return Number(r.stdout.trim().split("\n").at(-1));
}

describe("a full disk under --dir", () => {
  test.concurrent("a full disk under --dir is reported, corrupts nothing, and pgod converges once space is freed", async () => {
    await scenario("disk full", async (env) => {
      await mkdir(env.dir, { recursive: true });
      await run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0711", "tmpfs", env.dir]);
      env.defer(async () => {
        if ((await run(["umount", env.dir], { check: false })).code !== 0) await run(["umount", "-l", env.dir]);
      });
      const s = await serve(env, "full");
      const { name, pg, checkout } = s;
      const stateFile = join(env.dir, ".state", name, "state.json");
      const hostKeyFile = join(env.dir, "ssh_host_ed25519_key");
      const [keyBytes, stateBytes] = await Promise.all([hashOf(hostKeyFile), hashOf(stateFile)]);
      const v1 = (await checkoutSound(checkout)).head;

      // Fill it: big blocks first, then the last pages.
      const fill = join(env.dir, "fill");
      await run(["dd", "if=/dev/zero", `of=${fill}`, "bs=64k"], { check: false });
      await run(["dd", "if=/dev/zero", `of=${fill}`, "bs=4k", "oflag=append", "conv=notrunc"], { check: false });
      expect(await freeBytes(env.dir)).toBe(0);

      let since = pg.log().length;
      const v2 = await s.repo.commit({ "compose.yaml": version(2) }, "version 2 on a full disk");
      const warn = new RegExp(`warn msg="cannot follow the remote, keeping what runs" service=${name} .*No space left on device`);
      await pg.waitForLog(warn, { since });
      expect((await statusOf(s))["last error"]).toMatch(/No space left on device/);
      // A container killed meanwhile is brought back; the records of that deploy may not fit.
      await run(["docker", "kill", s.first.id]);
      await pg.waitForLog(new RegExp(`msg="containers missing or not running, bringing them up" service=${name}`), { since });
      const back = await waitRunning(name);
      expect(await versionOf(back.id)).toBe("1");
      await pg.waitForLog(new RegExp(`msg=deployed service=${name} `), { since });

      // Nothing pgod keeps is damaged: the checkout is still the first commit, whole.
      expect(await checkoutSound(checkout)).toEqual({ fsck: 0, head: v1, dirty: "" });
      expect(await hashOf(hostKeyFile)).toBe(keyBytes);
      // Saving the state after that deploy failed, and left the old file whole.
      expect(pg.lines(new RegExp(`warn msg="cannot save state" service=${name} .*no space left on device`)).length).toBeGreaterThanOrEqual(1);
      expect(await hashOf(stateFile)).toBe(stateBytes);
      expect((await readdir(join(env.dir, ".state", name))).sort()).toEqual(["age-identity.txt", "history", "state.json"]);
      const state = JSON.parse(await readFile(stateFile, "utf8")) as Record<string, unknown>;
      expect(state["good"]).toBe(v1);
      const h = await historyOf(env.dir, name);
      expect(h.torn).toEqual([]);
      expect(h.entries.every((e) => e["commit"] === v1)).toBe(true);

      // A restart while the disk is still full: same host key, same container.
      expect(await pg.signal("SIGTERM")).toBe(0);
      const again = await env.pgod([{ name, repository: s.repo.bare }], { tag: "again" });
      const { port, hostKey } = await sshListening(again);
      expect(hostKey).toBe(s.hostKey);
      since = again.log().length;
      await again.waitForLog(warn, { since });
      expect((await runningOf(name)).map((c) => c.id)).toEqual([back.id]);
      expect((await statusOf({ ...s, port }))["commit"]).toBe(v1);
      expect(await freeBytes(env.dir)).toBe(0);

      await rm(fill);
      const after = await waitFor(
        "the container of version 2 once space is freed",
        () => containersOf(name),
        (cs) => cs.length === 1 && cs[0]!.state === "running" && cs[0]!.id !== back.id,
        { timeoutMs: 60_000 },
      );
      expect(await versionOf(after[0]!.id)).toBe("2");
      await again.waitForLog(new RegExp(`msg=deployed service=${name} commit=${v2.slice(0, 12)} `), { since });
      expect(await checkoutSound(checkout)).toEqual({ fsck: 0, head: v2, dirty: "" });
      const h2 = await historyOf(env.dir, name);
      expect(h2.torn).toEqual([]);
      expect(h2.entries.at(-1)).toMatchObject({ commit: v2, result: "deployed" });
      expect(JSON.parse(await readFile(stateFile, "utf8"))).toMatchObject({ good: v2 });
      expect(await hashOf(stateFile)).not.toBe(stateBytes);
      expect(await hashOf(hostKeyFile)).toBe(keyBytes);
    });
  });
});
