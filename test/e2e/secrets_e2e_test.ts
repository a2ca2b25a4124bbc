/**
 * Secrets encrypted to a service, with the real age CLI, a real pgod and the real Docker engine:
 * a container gets a value from `db.env.age` through env_file; the value appears nowhere in
 * pgod's log (with --debug), its children's argv and environment, metrics or status; a file
 * encrypted to another service refuses the commit while the old container runs; removing the
 * encrypted file removes the plain one. Run `bash scripts/build.sh` first.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, statSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { gitDirOf } from "../../src/git.ts";
import {
  chownTree, composeFile, headOf, inspect, makeKey, metricsAddress, openssh, randomId, run, runningOf, scenario, sshListening,
  sweepRun, uniqueName, waitFor, waitRunning,
} from "./harness.ts";

afterAll(async () => {
  await sweepRun();
});

/** Encrypts `text` to `recipient` with the age CLI, armored or binary. */
async function ageEncrypt(recipient: string, text: string, armored = false): Promise<Buffer> {
  const p = Bun.spawn(["age", ...(armored ? ["-a"] : []), "-r", recipient], { stdin: Buffer.from(text), stdout: "pipe", stderr: "pipe" });
  const [out, code] = await Promise.all([new Response(p.stdout).arrayBuffer(), p.exited]);
  if (code !== 0) throw new Error(`age exited ${code}`);
  return Buffer.from(out);
}

/** Descendants of `pid` (children, grandchildren...). */
async function descendants(pid: number): Promise<number[]> {
  const parent = new Map<number, number>();
  for (const p of await readdir("/proc")) {
    if (!/^\d+$/.test(p)) continue;
    const stat = await readFile(`/proc/${p}/stat`, "utf8").catch(() => "");
    const m = /\) \S+ (\d+)/.exec(stat);
    if (m) parent.set(Number(p), Number(m[1]));
  }
  const out: number[] = [];
  const want = new Set([pid]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const [p, pp] of parent) {
      if (want.has(pp) && !want.has(p)) {
        want.add(p);
        out.push(p);
        grew = true;
      }
    }
  }
  return out;
}

/** Whether any descendant of `pid` has `needle` in its argv or environment right now. */
async function childLeaks(pid: number, needle: string): Promise<string | null> {
  for (const p of await descendants(pid)) {
    for (const f of ["cmdline", "environ"]) {
      const text = await readFile(`/proc/${p}/${f}`, "latin1").catch(() => "");
      if (text.includes(needle)) return `${p}/${f}`;
    }
  }
  return null;
}

const withEnvFile = (file: string): string =>
  composeFile().replace("    pull_policy: never\n", `    pull_policy: never\n    env_file: ${file}\n`);

describe("secrets encrypted to a service, with a real Docker engine", () => {
  test.concurrent("a container gets its value from db.env.age, the value leaks nowhere, and another service's file is refused", async () => {
    await scenario("age secrets", async (env) => {
      const name = uniqueName("sec");
      const other = uniqueName("seco");
      const user = await env.user();
      const key = await makeKey(await env.tempDir(), "team");
      const repo = await env.repo({ "compose.yaml": composeFile(), "ssh/team.pub": key.pub });
      const otherRepo = await env.repo({ "compose.yaml": composeFile(), "ssh/team.pub": key.pub });
      await chownTree(repo.bare, user.uid, user.gid);
      await chownTree(otherRepo.bare, user.uid, user.gid);
      const pg = await env.pgod([
        { name, user: user.name, repository: repo.bare },
        { name: other, user: user.name, repository: otherRepo.bare },
      ]);
      const first = await waitRunning(name);
      const { port } = await sshListening(pg);
      const client = { port, key, knownHosts: "/dev/null" };
      const rcpt = await openssh(client, `${name}//recipient`);
      expect(rcpt.code).toBe(0);
      const recipient = rcpt.stdout.trim();
      expect(recipient).toMatch(/^age1[0-9a-z]{58}$/);
      const otherRecipient = (await openssh(client, `${other}//recipient`)).stdout.trim();
      expect(otherRecipient).toMatch(/^age1/);
      expect(otherRecipient).not.toBe(recipient);

      const secret = `s3cret-${randomId(20)}`;
      // Armored: the test repository takes text (binary files are covered by the unit tests).
      const enc = await ageEncrypt(recipient, `DB_PASSWORD=${secret}\n`, true);
      const commit = await repo.commit({ "compose.yaml": withEnvFile("db.env"), "db.env.age": enc.toString("utf8") }, "add a secret");
      let leak: string | null = null;
      const next = await waitFor("a new container with the secret", async () => {
        leak ??= await childLeaks(pg.proc.pid, secret);
        return runningOf(name);
      }, (cs) => cs.length === 1 && cs[0]!.id !== first.id);
      expect(await headOf(join(pg.dir, name))).toBe(commit);
      const inspected = await inspect(next[0]!.id);
      expect(JSON.stringify(inspected)).toContain(`DB_PASSWORD=${secret}`);
      // The plain file: beside the encrypted one, 0600, the service user's.
      const plain = join(pg.dir, name, "db.env");
      const st = statSync(plain);
      expect([st.mode & 0o777, st.uid]).toEqual([0o600, user.uid]);
      // pgod's output, not the repository's: git does not see it as a change.
      const status = await run(["git", "-c", "safe.directory=*", "--git-dir", gitDirOf(join(pg.dir, name)), "--work-tree", join(pg.dir, name), "status", "--porcelain", "--untracked-files=all"]);
      expect(status.stdout).toBe("");
      // Nowhere else: pgod's log (--debug), its children, metrics, status, history.
      expect(leak).toBeNull();
      expect(pg.log()).not.toContain(secret);
      const metrics = await (await fetch(`http://${await metricsAddress(pg)}/metrics`)).text();
      expect(metrics).not.toContain(secret);
      for (const cmd of ["status", "history", "check"]) {
        const r = await openssh(client, `${name}//${cmd}`);
        expect(r.stdout + r.stderr).not.toContain(secret);
      }

      // A file encrypted to the other service cannot be decrypted here: refused, the old container runs.
      const foreign = await ageEncrypt(otherRecipient, `DB_PASSWORD=other-${randomId(12)}\n`, true);
      const bad = await repo.commit({ "db.env.age": foreign.toString("utf8") }, "a secret for another service");
      await pg.waitForLog(new RegExp(`msg="compose file refused, keeping what runs" service=${name} commit=${bad.slice(0, 12)}`));
      expect(pg.log()).toContain('Cannot decrypt \\"db.env.age\\": it is not encrypted to this service');
      expect((await runningOf(name)).map((c) => c.id)).toEqual([next[0]!.id]);
      expect(await headOf(join(pg.dir, name))).toBe(commit);

      // Removing the encrypted file (and its use) removes the plain file.
      const gone = await repo.commit({ "compose.yaml": composeFile({ env: { NO_SECRET: "1" } }), "db.env.age": null }, "drop the secret");
      await waitFor(`checkout at ${gone}`, () => headOf(join(pg.dir, name)), (h) => h === gone);
      await waitFor("the plain file removed", async () => existsSync(plain), (e) => e === false);
      expect(pg.log()).not.toContain(secret);
    });
  });
});
