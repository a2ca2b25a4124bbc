/**
 * `verify = "commits"` against the real Docker engine: only commits signed (git's SSH signatures)
 * by a key in `ssh/` of the last verified commit deploy. An unsigned commit, a key that signs its
 * own addition and a force-push back to an older commit are held while the old container keeps
 * running, and status, check, history and the metric say why; a rotation signed by the old key
 * lets the new key's commits deploy. Each test starts its own `dist/pgod`. Run
 * `bash scripts/build.sh` first.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  chownTree, composeFile, inspect, lsRemote, makeKey, metricsAddress, openssh, PGOCTL, PGOD, preflight, run, runningOf,
  scenario, sshListening, statusOf, sweepRun, uniqueName, waitFor, waitRunning,
} from "./harness.ts";
import type { Env, Key, Pgod } from "./harness.ts";

beforeAll(() => preflight([PGOD, PGOCTL]));
afterAll(sweepRun);

/** The value of V in the project's one running container. */
async function versionOf(project: string): Promise<{ id: string; v: string }> {
  const cs = await runningOf(project);
  if (cs.length !== 1) throw new Error(`Expected one running container of "${project}", found ${cs.length}`);
  const env = (await inspect(cs[0]!.id)).Config.Env ?? [];
  return { id: cs[0]!.id, v: env.find((e) => e.startsWith("V="))?.slice(2) ?? "" };
}

const compose = (v: string): Record<string, string> => ({ "compose.yaml": composeFile({ env: { V: v } }) });

/** Starts pgod on a repository whose first commit (the trust root) holds `ssh/team.pub`. */
async function start(env: Env, tag: string, user?: { name: string; uid: number; gid: number }) {
  const name = uniqueName(tag);
  const key = await makeKey(await env.tempDir(0o700), "team");
  const repo = await env.repo({ ...compose("0"), "ssh/team.pub": key.pub });
  const root = (await run(["git", "-C", repo.work, "rev-parse", "HEAD"])).stdout.trim();
  if (user) await chownTree(repo.bare, user.uid, user.gid);
  const pg = await env.pgod([{
    name, repository: repo.bare, ...(user ? { user: user.name } : {}), extra: `verify = "commits"\ntrust_root = "${root}"\n`,
  }]);
  const { port } = await sshListening(pg);
  await pg.waitForLog(new RegExp(`msg=deployed service=${name} commit=${root.slice(0, 12)}`));
  return { name, key, repo, root, pg, port };
}

/** Waits until pgod has held `commit` as unverified; returns the log line. */
async function held(pg: Pgod, name: string, commit: string): Promise<string> {
  const [line] = await pg.waitForLog(new RegExp(`msg="commit not verified, keeping what runs" service=${name} commit=${commit.slice(0, 12)} `));
  return line!;
}

async function unverifiedGauge(pg: Pgod, name: string): Promise<string | undefined> {
  const text = await (await fetch(`http://${await metricsAddress(pg)}/metrics`)).text();
  return new RegExp(`^pgo_service_head_unverified\\{service="${name}"\\} (\\d+)$`, "m").exec(text)?.[1];
}

describe("deploying only signed commits with a real Docker engine", () => {
  test.concurrent("a signed commit deploys; an unsigned one and a rewind are held while the container keeps running, and status, check, history and the metric say why", async () => {
    await scenario("signed unsigned rewind", async (env) => {
      const user = await env.user();
      const s = await start(env, "signed", user);
      const client = (k: Key) => ({ port: s.port, key: k, name: s.name, knownHosts: "/dev/null" });

      const signed = await s.repo.commit(compose("1"), "signed", { signingKey: s.key.file });
      await s.pg.waitForLog(new RegExp(`msg=deployed service=${s.name} commit=${signed.slice(0, 12)} `));
      const first = await waitFor("the signed commit's container", () => versionOf(s.name), (c) => c.v === "1");

      const since = s.pg.log().length;
      const unsigned = await s.repo.commit(compose("2"), "unsigned");
      expect(await held(s.pg, s.name, unsigned)).toContain("reason=\"not verified: unsigned");
      // Two more cycles leave it alone: the signed commit's container runs on, unchanged.
      await s.pg.waitForLog(lsRemote(s.pg.dir, s.name), { since, count: 2 });
      expect(await versionOf(s.name)).toEqual(first);
      expect(s.pg.lines(new RegExp(`msg=deployed service=${s.name} commit=${unsigned.slice(0, 12)}`))).toEqual([]);
      const st = await statusOf(client(s.key));
      expect(st["commit"]).toBe(signed);
      expect(st["last result"]).toBe("unverified");
      expect(st["unverified"]).toStartWith(`unsigned: commit ${unsigned.slice(0, 12)} is not signed`);
      const check = await openssh(client(s.key), `${s.name}//check`);
      expect({ code: check.code, out: check.stdout.trim() }).toEqual({
        code: 1,
        out: `refused: commit ${unsigned.slice(0, 12)}, the newest of branch "main" (${signed.slice(0, 12)} runs now and keeps running)\nnot verified: unsigned: commit ${unsigned.slice(0, 12)} is not signed`,
      });
      const history = await openssh(client(s.key), `${s.name}//history`);
      expect(history.stdout.split("\n")[0]).toMatch(new RegExp(`${unsigned.slice(0, 12)} +poll +unverified .*not verified: unsigned`));
      expect(await unverifiedGauge(s.pg, s.name)).toBe("1");

      // Self-healing brings back the last verified commit, not the unsigned one.
      await run(["docker", "rm", "--force", first.id]);
      const healed = await waitFor("a container brought back", () => versionOf(s.name).catch(() => null), (c) => c !== null && c.id !== first.id);
      expect(healed!.v).toBe("1");

      const next = await s.repo.commit(compose("3"), "signed again", { signingKey: s.key.file });
      await s.pg.waitForLog(new RegExp(`msg=deployed service=${s.name} commit=${next.slice(0, 12)} `));
      const third = await waitFor("the next signed commit's container", () => versionOf(s.name), (c) => c.v === "3");
      expect(await unverifiedGauge(s.pg, s.name)).toBe("0");

      // A force-push back to the first signed commit is held: it does not descend from the last verified one.
      await s.repo.forcePush(signed);
      expect(await held(s.pg, s.name, signed)).toContain("not a descendant");
      expect(await versionOf(s.name)).toEqual(third);
      expect((await statusOf(client(s.key)))["unverified"]).toStartWith("not a descendant");

      // git verify-commit ran as the service's user, with the allowed-signers file pgod made.
      const verifies = s.pg.lines(/msg=exec argv="git -c gpg.format=ssh -c gpg.ssh.program=ssh-keygen -c gpg.ssh.allowedSignersFile=\S+ verify-commit /);
      expect(verifies.length).toBeGreaterThanOrEqual(2);
      for (const line of verifies) expect(line).toMatch(new RegExp(` uid=${user.uid}\\b`));
    });
  }, 300_000);

  test.concurrent("a new key signing its own addition does not deploy; a rotation signed by the old key does, and then the new key's commits deploy", async () => {
    await scenario("key rotation", async (env) => {
      const s = await start(env, "rotate");
      const fresh = await makeKey(await env.tempDir(0o700), "fresh");
      const before = await waitRunning(s.name);

      const selfSigned = await s.repo.commit({ ...compose("1"), "ssh/fresh.pub": fresh.pub }, "fresh signs itself in", { signingKey: fresh.file });
      expect(await held(s.pg, s.name, selfSigned)).toContain("unknown key");
      expect((await versionOf(s.name)).id).toBe(before.id);
      expect((await statusOf({ port: s.port, key: s.key, name: s.name }))["unverified"]).toContain(`is signed by ${fresh.fingerprint}`);

      // The old key signs the rotation: the new key in, the old one out.
      const rotation = await s.repo.commit({ ...compose("2"), "ssh/team.pub": null }, "rotate to fresh", { signingKey: s.key.file });
      await s.pg.waitForLog(new RegExp(`msg=deployed service=${s.name} commit=${rotation.slice(0, 12)} `));
      await waitFor("the rotation's container", () => versionOf(s.name), (c) => c.v === "2");

      const byFresh = await s.repo.commit(compose("3"), "by the new key", { signingKey: fresh.file });
      await s.pg.waitForLog(new RegExp(`msg=deployed service=${s.name} commit=${byFresh.slice(0, 12)} `));
      const now = await waitFor("the new key's container", () => versionOf(s.name), (c) => c.v === "3");

      // The old key was rotated out: its commits no longer deploy.
      const byOld = await s.repo.commit(compose("4"), "by the old key", { signingKey: s.key.file });
      expect(await held(s.pg, s.name, byOld)).toContain("unknown key");
      expect(await versionOf(s.name)).toEqual(now);
    });
  }, 300_000);

  test.concurrent("a trust root the repository does not have stops that service alone, with an error naming trust_root", async () => {
    await scenario("unknown trust root", async (env) => {
      const key = await makeKey(await env.tempDir(0o700), "team");
      const [good, bad] = [uniqueName("plain"), uniqueName("noroot")];
      const goodRepo = await env.repo(compose("0"));
      const badRepo = await env.repo({ ...compose("0"), "ssh/team.pub": key.pub });
      const missing = "0123456789abcdef0123456789abcdef01234567";
      const pg = await env.pgod([
        { name: bad, repository: badRepo.bare, extra: `verify = "commits"\ntrust_root = "${missing}"\n` },
        { name: good, repository: goodRepo.bare },
      ]);
      const { port } = await sshListening(pg);
      await waitRunning(good);
      const [failed] = await pg.waitForLog(new RegExp(`msg="cycle failed" service=${bad} `));
      expect(failed).toContain(`trust_root ${missing} is not a commit of the repository`);
      expect(await runningOf(bad)).toEqual([]);
      const st = await statusOf({ port, key, name: bad });
      expect(st["last error"]).toBe(`Cannot deploy "${bad}": trust_root ${missing} is not a commit of the repository, so no commit can be verified; nothing is deployed until "trust_root" names a commit of the branch`);
      // pgoctl up does not run the unverified clone either.
      const up = await openssh({ port, key, knownHosts: "/dev/null" }, `${bad}//up`);
      expect(up.code).toBe(65);
      expect(up.stderr).toContain("not verified");
      expect(await runningOf(bad)).toEqual([]);
    });
  }, 300_000);
});
