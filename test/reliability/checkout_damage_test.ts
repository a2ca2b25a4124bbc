/**
 * A checkout damaged by hand is found and cloned again, with the running container kept; a
 * healthy one is never cloned again. Run `bash scripts/build.sh` first.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, statSync } from "node:fs";
import { rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { lsRemote, preflight, run, runningOf, scenario, sweepRun, waitRunning } from "../e2e/harness.ts";
import { checkoutSound, gitIn, serve, version, versionOf } from "./faults.ts";
import { gitDirOf } from "../../src/git.ts";

beforeAll(() => preflight());
afterAll(sweepRun);

const GIT_ID = ["-c", "user.name=t", "-c", "user.email=t@t"];

describe("a damaged checkout", () => {
  test.concurrent("a checkout whose git directory is removed while pgod runs is cloned again, and no enclosing repository is touched", async () => {
    await scenario("git removed", async (env) => {
      // The whole environment sits in a git repository whose origin is the service's own remote:
      // git looking above the checkout would find it and fetch, check out and clean there.
      await run(["git", "init", "--quiet", "-b", "main", env.root]);
      await writeFile(join(env.root, "marker.txt"), "enclosing\n");
      await run(["git", "-C", env.root, "add", "marker.txt"]);
      await run(["git", ...GIT_ID, "-C", env.root, "commit", "--quiet", "-m", "enclosing"]);
      const enclosing = (await gitIn(env.root, "rev-parse", "HEAD")).stdout.trim();

      const s = await serve(env, "nogit");
      const { name, pg, checkout } = s;
      await run(["git", "-C", env.root, "remote", "add", "origin", s.repo.bare]);
      const v1 = (await checkoutSound(checkout)).head;

      const since = pg.log().length;
      await rm(gitDirOf(checkout), { recursive: true, force: true });
      const v2 = await s.repo.commit({ "compose.yaml": version(2) }, "version 2");
      await pg.waitForLog(new RegExp(`warn msg="checkout is damaged, cloning it again at the next cycle" service=${name} `), { since });
      await pg.waitForLog(new RegExp(`msg=cloned service=${name} commit=${v2.slice(0, 12)} `), { since });
      await pg.waitForLog(new RegExp(`msg=deployed service=${name} commit=${v2.slice(0, 12)} `), { since });
      const c = await waitRunning(name);
      expect(await versionOf(c.id)).toBe("2");
      expect(await checkoutSound(checkout)).toEqual({ fsck: 0, head: v2, dirty: "" });
      expect(v2).not.toBe(v1);

      // The enclosing repository: same HEAD, nothing fetched, its file in place.
      expect((await gitIn(env.root, "rev-parse", "HEAD")).stdout.trim()).toBe(enclosing);
      expect((await gitIn(env.root, "for-each-ref", "--format=%(refname)")).stdout.trim()).toBe("refs/heads/main");
      expect(existsSync(join(env.root, "marker.txt"))).toBe(true);
    });
  });

  test.concurrent("a checkout whose HEAD holds garbage is found at start and cloned again, and the container is kept", async () => {
    await scenario("garbage head", async (env) => {
      const s = await serve(env, "badhead");
      const { name, pg, checkout } = s;
      const v1 = (await checkoutSound(checkout)).head;
      expect(await pg.signal("SIGTERM")).toBe(0);
      await writeFile(join(gitDirOf(checkout), "HEAD"), "\u0000garbage\u00ff\n");

      const again = await env.pgod([{ name, repository: s.repo.bare }], { tag: "again" });
      await again.waitForLog(new RegExp(`warn msg="checkout is damaged, cloning again" service=${name} `));
      await again.waitForLog(new RegExp(`msg=cloned service=${name} commit=${v1.slice(0, 12)} `));
      await again.waitForLog(new RegExp(`msg=deployed service=${name} `));
      expect(await checkoutSound(checkout)).toEqual({ fsck: 0, head: v1, dirty: "" });
      expect((await runningOf(name)).map((c) => c.id)).toEqual([s.first.id]);
    });
  });

  test.concurrent("a healthy checkout with an untracked file is not cloned again at start, and the file is cleaned before up", async () => {
    await scenario("healthy checkout", async (env) => {
      const s = await serve(env, "healthy");
      const { name, pg, checkout } = s;
      expect(await pg.signal("SIGTERM")).toBe(0);
      const marker = join(checkout, "untracked-marker");
      await writeFile(marker, "mine\n");
      const before = { dir: statSync(checkout).ino, git: statSync(gitDirOf(checkout)).ino };

      const again = await env.pgod([{ name, repository: s.repo.bare }], { tag: "again" });
      await again.waitForLog(new RegExp(`msg=deployed service=${name} `));
      // One more cycle after the first, so a late re-clone would have shown by now.
      await again.waitForLog(lsRemote(again.dir, name), { count: 2 });
      expect(again.lines(/checkout is damaged|msg=cloned /)).toEqual([]);
      expect(again.lines(/msg=exec argv="git clone /)).toEqual([]);
      expect({ dir: statSync(checkout).ino, git: statSync(gitDirOf(checkout)).ino }).toEqual(before);
      // What runs is the commit: an untracked file (a container's, say) is gone before up.
      expect(existsSync(marker)).toBe(false);
      expect((await runningOf(name)).map((c) => c.id)).toEqual([s.first.id]);
    });
  });
});
