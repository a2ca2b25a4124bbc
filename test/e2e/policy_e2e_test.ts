/**
 * The compose policy against the real Docker engine: a refused commit is never deployed while
 * the running container keeps serving, a fixing commit deploys, and a root service bypasses the
 * rules. Run `bash scripts/build.sh` first.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import {
  chownTree, composeFile, headOf, makeKey, openssh, run, runningOf, scenario, sshListening, sweepRun, uniqueName, waitFor,
  waitRunning,
} from "./harness.ts";

afterAll(async () => {
  await sweepRun();
});

describe("the compose policy with a real Docker engine", () => {
  test.concurrent("a commit that adds privileged is not deployed while the old container runs, and a fix deploys", async () => {
    await scenario("policy refuses", async (env) => {
      const name = uniqueName("pol");
      const user = await env.user();
      const keyDir = await env.tempDir();
      const key = await makeKey(keyDir, "team");
      const good = composeFile();
      const repo = await env.repo({ "compose.yaml": good, "ssh/team.pub": key.pub });
      await chownTree(repo.bare, user.uid, user.gid);
      const pg = await env.pgod([{ name, user: user.name, repository: repo.bare }]);
      const first = await waitRunning(name);
      const { port } = await sshListening(pg);
      const client = { port, key, knownHosts: "/dev/null" };

      const bad = await repo.commit({ "compose.yaml": good.replace("    pull_policy: never\n", "    pull_policy: never\n    privileged: true\n") }, "privileged");
      await pg.waitForLog(new RegExp(`msg="compose file refused, keeping what runs" service=${name} commit=${bad.slice(0, 12)}`));
      expect(pg.log()).toContain('\\"privileged\\" is refused');
      // Not checked out, not deployed: the old container runs on.
      expect(await headOf(join(pg.dir, name))).not.toBe(bad);
      const running = await runningOf(name);
      expect(running.map((c) => c.id)).toEqual([first.id]);
      const status = await openssh(client, `${name}//status`);
      expect(status.code).toBe(0);
      expect(status.stdout).toContain(`last result: refused`);
      expect(status.stdout).toContain(`Refused commit ${bad.slice(0, 12)}`);

      const fixed = await repo.commit({ "compose.yaml": composeFile({ env: { FIXED: "1" } }) }, "fix");
      await waitFor(`checkout at ${fixed}`, () => headOf(join(pg.dir, name)), (h) => h === fixed);
      const next = await waitFor(`a new running container of ${name}`, () => runningOf(name), (cs) => cs.length === 1 && cs[0]!.id !== first.id);
      expect(next[0]!.state).toBe("running");
    });
  });

  test.concurrent("check refuses privileged for a non-root service and allows the same file for a root service", async () => {
    await scenario("policy root", async (env) => {
      const keyDir = await env.tempDir();
      const key = await makeKey(keyDir, "team");
      // Privileged containers cannot start on these machines: check the verdict, not a run.
      const privileged = composeFile().replace("    pull_policy: never\n", "    pull_policy: never\n    privileged: true\n");
      const user = await env.user();
      const userRepo = await env.repo({ "compose.yaml": privileged, "ssh/team.pub": key.pub });
      await chownTree(userRepo.bare, user.uid, user.gid);
      const rootRepo = await env.repo({ "compose.yaml": privileged, "ssh/team.pub": key.pub });
      const asUser = uniqueName("polu");
      const asRoot = uniqueName("polr");
      const pg = await env.pgod([{ name: asUser, user: user.name, repository: userRepo.bare }, { name: asRoot, repository: rootRepo.bare }]);
      const { port } = await sshListening(pg);
      const client = { port, key, knownHosts: "/dev/null" };
      await pg.waitForLog(new RegExp(`msg=cloned service=${asUser} `));
      await pg.waitForLog(new RegExp(`msg=cloned service=${asRoot} `));
      const refused = await waitFor("check of the user service", () => openssh(client, `${asUser}//check`), (r) => r.code !== 69);
      expect(refused.code).toBe(1);
      expect(refused.stdout).toContain('service "web": services.web.privileged (rule privileged)');
      const allowed = await openssh(client, `${asRoot}//check`);
      expect({ code: allowed.code, stdout: allowed.stdout })
        .toEqual({ code: 0, stdout: expect.stringMatching(/^ok: commit [0-9a-f]{12}, the newest of branch "main", may be deployed \(/) });
      // The user service was never brought up.
      expect(await runningOf(asUser)).toEqual([]);
      const up = await openssh(client, `${asUser}//up`);
      expect(up.code).toBe(65);
      expect(up.stderr).toContain("Refused:");
      expect(await run(["docker", "ps", "-aq", "--filter", `label=com.docker.compose.project=${asUser}`]).then((r) => r.stdout.trim())).toBe("");
    });
  });
});
