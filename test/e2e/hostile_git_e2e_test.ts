/**
 * A container that writes into its own checkout (bound read-write as `.:/repo`) gains nothing on
 * the host: git hooks and config it plants never run, and ignored files it leaves (`.env`, a
 * symlink to `/`) never reach what `docker compose up` reads. The hostile files are written by a
 * real container where the policy lets it bind the checkout read-write, and by the test itself (as
 * root, standing in for such a container) in any case. Run `bash scripts/build.sh` first.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { chmod, mkdir, rm, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { gitDirOf } from "../../src/git.ts";
import { chownTree, headOf, IMAGE, inspect, preflight, run, scenario, sweepRun, uniqueName, waitFor } from "./harness.ts";
import { containersOf } from "./harness.ts";

beforeAll(() => preflight());
afterAll(sweepRun);

function compose(version: string): string {
  return `services:
  web:
    image: ${IMAGE}
    pull_policy: never
    stop_signal: SIGKILL
    network_mode: none
    command: ["/bin/httpd", "-f", "-p", "8080"]
    environment:
      PRIV: \${PRIV:-false}
      VERSION: "${version}"
    volumes:
      - .:/repo
      - ./host:/host:ro
`;
}

describe("a container that writes its checkout", () => {
  test.concurrent("hooks, git config and ignored files it plants change nothing: no hook runs, the next deploy runs the commit's bytes only", async () => {
    await scenario("hostile checkout", async (env) => {
      const name = uniqueName("hostile");
      const user = await env.user();
      const repo = await env.repo({ "compose.yaml": compose("1"), ".gitignore": ".env\nextra\n", "host/.keep": "" });
      await chownTree(repo.bare, user.uid, user.gid);
      // The admin allows writable checkout binds for this service (the default is read-only), so a
      // real container can write its checkout, the case this test is about.
      const pg = await env.pgod([{ name, user: user.name, repository: repo.bare, extra: 'checkout_binds = "rw"\n' }]);
      const checkout = join(pg.dir, name);
      const [first] = await waitFor(`a running container of ${name}`, () => containersOf(name), (cs) => cs.length === 1 && cs[0]!.state === "running", { timeoutMs: 120_000 });
      expect(existsSync(join(checkout, ".git"))).toBe(false);

      // Where a hook would leave its mark, writable by the service user.
      const marks = await env.tempDir(0o777);
      const marker = join(marks, "MARKER");
      const hook = `#!/bin/sh\ntouch ${marker}\n`;

      // 1. From the real container, as far as the policy lets it write the checkout.
      const fromContainer = await run([
        "docker", "exec", first!.id, "sh", "-c",
        `echo PRIV=INJECTED > /repo/.env && mkdir -p /repo/.git/hooks && printf '${hook.replace(/\n/g, "\\n")}' > /repo/.git/hooks/post-checkout && chmod 755 /repo/.git/hooks/post-checkout`,
      ], { check: false });
      // 2. The same and more from the test, as root, as a container with a writable bind could.
      await writeFile(join(checkout, ".env"), "PRIV=INJECTED\n");
      await mkdir(join(checkout, ".git", "hooks"), { recursive: true });
      for (const h of ["post-checkout", "reference-transaction", "post-index-change"]) {
        await writeFile(join(checkout, ".git", "hooks", h), hook);
        await chmod(join(checkout, ".git", "hooks", h), 0o755);
      }
      await writeFile(join(checkout, ".git", "config"), `[core]\n\tfsmonitor = touch ${marker}; false\n\thooksPath = ${join(checkout, ".git", "hooks")}\n[remote "origin"]\n\tuploadpack = touch ${marker}; false\n`);
      await writeFile(join(checkout, ".git", "HEAD"), "ref: refs/heads/main\n");
      await symlink("/", join(checkout, "extra"));
      await rm(join(checkout, "host"), { recursive: true, force: true });
      await symlink("/", join(checkout, "host"));

      const since = pg.log().length;
      const next = await repo.commit({ "compose.yaml": compose("2") }, "version 2");
      await pg.waitForLog(new RegExp(`msg=deployed service=${name} commit=${next.slice(0, 12)} `), { since, timeoutMs: 180_000 });
      const [second] = await waitFor(`the new container of ${name}`, () => containersOf(name), (cs) => cs.length === 1 && cs[0]!.state === "running" && cs[0]!.id !== first!.id);

      // No hook and no program from git config ran.
      expect(existsSync(marker)).toBe(false);
      // The ignored .env did not change what runs; the symlink to / did not mount the host.
      const envOf = (await inspect(second!.id)).Config.Env ?? [];
      expect(envOf).toContain("VERSION=2");
      expect(envOf).toContain("PRIV=false");
      expect(envOf).not.toContain("PRIV=INJECTED");
      const hostSeen = await run(["docker", "exec", second!.id, "ls", "-a", "/host"], { check: false });
      expect(hostSeen.stdout.split("\n").filter((l) => l && l !== "." && l !== "..")).toEqual([".keep"]);
      // The checkout is exactly the commit: nothing untracked, nothing ignored, no .git.
      const status = await run(["git", "-c", "safe.directory=*", `--git-dir=${gitDirOf(checkout)}`, `--work-tree=${checkout}`, "status", "--porcelain", "--ignored"], { cwd: checkout });
      expect(status.stdout).toBe("");
      expect(existsSync(join(checkout, ".git"))).toBe(false);
      expect(existsSync(join(checkout, "extra"))).toBe(false);
      expect(await headOf(checkout)).toBe(next);
      // pgod kept working: no failed cycle.
      expect(pg.lines(new RegExp(`msg="cycle failed" service=${name} `), since)).toEqual([]);
      // Whether the container itself could write there is the policy's to decide (a read-only
      // checkout bind later): said, not required.
      if (fromContainer.code !== 0) console.log(`the container could not write its checkout: ${fromContainer.stderr.trim()}`);
    });
  });
});
