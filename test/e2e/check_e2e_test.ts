/**
 * Visible refusals with a real pgod, a real engine and dist/pgoctl: `check` answers for the
 * newest commit of the branch, not for what runs, and `status` names a refused commit, while the
 * old container keeps running. Run `bash scripts/build.sh` first.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import {
  chownTree, composeFile, headOf, makeKey, pgoctl, preflight, QUIET_INTERVAL, run, runningOf, scenario, sshListening, statusOf,
  sweepRun, uniqueName, waitRunning,
} from "./harness.ts";
import { PGOCTL, PGOD } from "./harness.ts";

beforeAll(async () => {
  await preflight([PGOD, PGOCTL]);
});

afterAll(async () => {
  await sweepRun();
});

describe("check and status with a real pgod", () => {
  test("a pushed refused commit: check exits 1 naming the key, status names it, the old container runs on; a fix: check exits 0", async () => {
    await scenario("check newest", async (env) => {
      const name = uniqueName("chk");
      const user = await env.user();
      const key = await makeKey(await env.tempDir(0o700), "team");
      const good = composeFile();
      const repo = await env.repo({ "compose.yaml": good, "ssh/team.pub": key.pub });
      await chownTree(repo.bare, user.uid, user.gid);
      // No poll after the first cycle: only check itself can learn of the new commits.
      const pg = await env.pgod([{ name, user: user.name, repository: repo.bare }], { args: ["-t", QUIET_INTERVAL] });
      const first = await waitRunning(name);
      await pg.waitForLog(new RegExp(`msg=deployed service=${name} `));
      const running = (await headOf(join(pg.dir, name)))!;
      const { port } = await sshListening(pg);
      const client = { port, key, knownHosts: join(env.root, "known_hosts") };

      const ok = await pgoctl(client, `${name}//check`);
      expect({ code: ok.code, stdout: ok.stdout }).toEqual({
        code: 0, stdout: `ok: commit ${running.slice(0, 12)}, the newest of branch "main", may be deployed (it runs now)\n`,
      });

      const privileged = good.replace("    pull_policy: never\n", "    pull_policy: never\n    privileged: true\n");
      const bad = await repo.commit({ "compose.yaml": privileged }, "privileged");
      const line = privileged.split("\n").indexOf("    privileged: true") + 1;
      const refused = await pgoctl(client, `${name}//check`);
      expect(refused.code).toBe(1);
      expect(refused.stdout).toBe([
        `refused: commit ${bad.slice(0, 12)}, the newest of branch "main" (${running.slice(0, 12)} runs now and keeps running)`,
        `compose.yaml:${line}: service "web": services.web.privileged (rule privileged): ${"a privileged container has every capability and every host device, which makes it root on the host"}: "true"`,
        "",
      ].join("\n"));
      const status = await statusOf({ port, key, name });
      expect(status["refused"]).toBe(`${bad} (not deployed; what runs keeps running)`);
      expect(status["refusal"]).toContain('"privileged" is refused');
      expect(status["commit"]).toBe(running);
      // check moved nothing: the checkout and the container are those of the good commit.
      expect(await headOf(join(pg.dir, name))).toBe(running);
      expect((await runningOf(name)).map((c) => c.id)).toEqual([first.id]);

      // The loop, asked to sync, refuses it too, and the container still runs.
      const sync = await pgoctl(client, `${name}//sync`);
      expect(sync.code).toBe(1);
      expect(sync.stderr).toContain(`Refused commit ${bad.slice(0, 12)}`);
      expect((await runningOf(name)).map((c) => c.id)).toEqual([first.id]);

      const fixed = await repo.commit({ "compose.yaml": composeFile({ env: { FIXED: "1" } }) }, "fix");
      const after = await pgoctl(client, `${name}//check`);
      expect({ code: after.code, stdout: after.stdout }).toEqual({
        code: 0, stdout: `ok: commit ${fixed.slice(0, 12)}, the newest of branch "main", may be deployed (${running.slice(0, 12)} runs now)\n`,
      });
      expect((await statusOf({ port, key, name }))["refused"]).toBe("none");
      expect(await headOf(join(pg.dir, name))).toBe(running);
      const synced = await pgoctl(client, `${name}//sync`);
      expect(synced.code).toBe(0);
      expect(await headOf(join(pg.dir, name))).toBe(fixed);

      // The service's evaluations ran in a cgroup of its own (memory and pids with cgroup v1),
      // which pgod removes when it stops.
      const cgroups = async (): Promise<string[]> => (await run(
        ["find", "/sys/fs/cgroup", "-maxdepth", "6", "-type", "d", "-name", `compose-${pg.proc.pid}-${name}`], { check: false },
      )).stdout.split("\n").filter(Boolean);
      const made = await cgroups();
      expect(made.length).toBeGreaterThan(0);
      expect(made.every((d) => d.includes("/pgo/"))).toBe(true);
      expect(await pg.signal("SIGTERM")).toBe(0);
      expect(await cgroups()).toEqual([]);
    });
  }, 300_000);
});
