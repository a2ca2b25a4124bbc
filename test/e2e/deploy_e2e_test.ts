/**
 * Safe deploys against the real Docker engine: a commit whose containers exit or fail their
 * healthcheck is rolled back to the last good commit, the deploy history survives a restart,
 * `rollback` pins and `unpin` releases, `sync` and signed push webhooks deploy at once (timed
 * in serial/webhook_latency_test.ts), and
 * unsigned, wrongly signed or replayed webhooks change nothing. Each test starts its own
 * `dist/pgod` (the repository's `ssh/` folder holds the client key); tests share no state and
 * run concurrently. Run `bash scripts/build.sh` first.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import {
  composeExec, composeFile, containersOf, headOf, lsRemote, openssh, pgoctl, PGOCTL, PGOD, preflight, QUIET_INTERVAL,
  randomId, run, runningOf, scenario, sshListening, statusOf, sweepRun, waitFor, waitRunning,
} from "./harness.ts";
import type { Ran } from "./harness.ts";
import { holdsFor } from "../kit/wait.ts";
import { post, pushEvent, serve, webhookAddress } from "./deploys.ts";
import type { Served } from "./deploys.ts";

/** A compose file whose busybox httpd serves a page saying `page` on port 8080, plus `extra` service lines. */
function serving(page: string, extra = ""): string {
  const cmd = `mkdir -p /srv/www && echo ${page} > /srv/www/index.html && exec httpd -f -p 8080 -h /srv/www`;
  return composeFile({ command: ["/bin/sh", "-c", cmd] }) + extra;
}

/** A healthcheck block for `serving()`: `cmd` is run every second, one failure makes it unhealthy. */
function healthcheck(cmd: string[]): string {
  // A generous timeout and three tries: on a busy machine an exec of `true` can take seconds,
  // and a healthy container must not read as unhealthy. `false` still fails within ~3 s.
  return `    healthcheck:\n      test: ${JSON.stringify(cmd)}\n      interval: 1s\n      timeout: 10s\n      retries: 3\n`;
}

/** What the project's one running container serves at `/`. */
async function page(project: string): Promise<string> {
  const cs = await runningOf(project);
  if (cs.length !== 1) throw new Error(`Expected one running container of "${project}", found ${cs.length}`);
  return (await run(["docker", "exec", cs[0]!.id, "wget", "-qO-", "http://127.0.0.1:8080/"])).stdout.trim();
}

/** The engine's health status of a container ("healthy", "unhealthy", "starting", or "" without a healthcheck). */
async function healthOf(id: string): Promise<string> {
  const r = await run(["docker", "inspect", "--type", "container", "--format", "{{if .State.Health}}{{.State.Health.Status}}{{end}}", id]);
  return r.stdout.trim();
}

/** pgoctl's stderr without its first-contact "Trusting ..." note. */
function clean(r: Ran): Ran {
  return { ...r, stderr: r.stderr.replace(/^pgoctl: Trusting .*\n/, "") };
}

beforeAll(() => preflight([PGOD, PGOCTL]));
afterAll(sweepRun);

describe("safe deploys with a real Docker engine", () => {
  test.concurrent("a commit whose container exits at once is rolled back, not retried, and a later good commit deploys", async () => {
    await scenario("exit rollback", async (env) => {
      const s = await serve(env, "exit", serving("good-one"));
      const good = await headOf(s.checkout);
      expect(await page(s.name)).toBe("good-one");

      const since = s.pg.log().length;
      const bad = await s.repo.commit({ "compose.yaml": composeFile({ command: ["/bin/sh", "-c", "exit 3"] }) }, "exits at once");
      const [rolling] = await s.pg.waitForLog(new RegExp(`error msg="deploy failed, rolling back" service=${s.name} `), { since });
      expect(rolling).toContain(`commit=${bad.slice(0, 12)}`);
      expect(rolling).toContain(`to=${good!.slice(0, 12)}`);
      await s.pg.waitForLog(new RegExp(`msg=deployed service=${s.name} commit=${good!.slice(0, 12)} trigger=rollback`), { since });

      // The good commit's container runs again and serves its page; the checkout is back at it.
      expect(await headOf(s.checkout)).toBe(good);
      const back = await waitRunning(s.name);
      expect(await page(s.name)).toBe("good-one");
      const st = await statusOf(s);
      expect(st["commit"]).toBe(good!);
      expect(st["last result"]).toBe("rolled back");
      expect(st["rolled back"]).toStartWith(bad);
      expect(st["last good"]).toBe(good!);
      expect(st["last error"]).toContain(bad.slice(0, 12));

      // Two more cycles see the bad commit on the remote and leave it alone.
      const ups = s.pg.lines(composeExec(s.name, "up")).length;
      const after = s.pg.log().length;
      await s.pg.waitForLog(lsRemote(s.pg.dir, s.name), { since: after, count: 2 });
      expect(s.pg.lines(composeExec(s.name, "up")).length).toBe(ups);
      expect(s.pg.lines(/msg="deploy failed, rolling back"/).length).toBe(1);
      expect((await runningOf(s.name)).map((c) => c.id)).toEqual([back.id]);
      expect(await headOf(s.checkout)).toBe(good);

      // A newer good commit deploys and ends the wait for a fix.
      const fixed = await s.repo.commit({ "compose.yaml": serving("good-two") }, "fixed");
      await waitFor("the checkout at the fixed commit", () => headOf(s.checkout), (h) => h === fixed);
      await waitFor(
        "the fixed commit's container serving",
        () => page(s.name),
        (p) => p === "good-two",
      );
      await s.pg.waitForLog(new RegExp(`msg=deployed service=${s.name} commit=${fixed.slice(0, 12)} trigger=poll`));
      const later = await statusOf(s);
      expect({ result: later["last result"], bad: later["rolled back"], good: later["last good"] }).toEqual({
        result: "deployed", bad: "none", good: fixed,
      });
    });
  });

  test.concurrent("a commit whose healthcheck fails is rolled back to the previous healthy container", async () => {
    await scenario("health rollback", async (env) => {
      const s = await serve(env, "health", serving("healthy-one", healthcheck(["CMD", "true"])), { extra: 'health_timeout = "20s"\n' });
      const good = await headOf(s.checkout);
      const first = await waitRunning(s.name);
      expect(await healthOf(first.id)).toBe("healthy");

      const since = s.pg.log().length;
      const bad = await s.repo.commit({ "compose.yaml": serving("sick", healthcheck(["CMD", "false"])) }, "fails its healthcheck");
      const [rolling] = await s.pg.waitForLog(new RegExp(`error msg="deploy failed, rolling back" service=${s.name} `), { since });
      expect(rolling).toContain(`commit=${bad.slice(0, 12)}`);
      expect(rolling).toContain("unhealthy");
      await s.pg.waitForLog(new RegExp(`msg=deployed service=${s.name} commit=${good!.slice(0, 12)} trigger=rollback`), { since });

      expect(await headOf(s.checkout)).toBe(good);
      const back = await waitRunning(s.name);
      expect(back.id).not.toBe(first.id);
      expect(await healthOf(back.id)).toBe("healthy");
      expect(await page(s.name)).toBe("healthy-one");
      const st = await statusOf(s);
      expect(st["last result"]).toBe("rolled back");
      expect(st["rolled back"]).toStartWith(bad);
      expect(st["last good"]).toBe(good!);

      // Bringing the good commit back after its container went does not end the wait for a fix
      // (a regression: it used to forget the bad commit, and the next cycle tried it again).
      const killed = s.pg.log().length;
      await run(["docker", "kill", back.id]);
      await s.pg.waitForLog(new RegExp(`msg=deployed service=${s.name} commit=${good!.slice(0, 12)} trigger=poll`), { since: killed });
      const healed = await waitRunning(s.name);
      const ups = s.pg.lines(composeExec(s.name, "up")).length;
      await s.pg.waitForLog(lsRemote(s.pg.dir, s.name), { since: s.pg.log().length });
      expect(s.pg.lines(composeExec(s.name, "up")).length).toBe(ups);
      expect((await runningOf(s.name)).map((c) => c.id)).toEqual([healed.id]);
      expect(await headOf(s.checkout)).toBe(good);
      expect((await statusOf(s))["rolled back"]).toStartWith(bad);
    });
  });

  test.concurrent("the history survives a restart, rollback pins a commit and unpin lets the next commit deploy", async () => {
    await scenario("history and pin", async (env) => {
      const s = await serve(env, "history", serving("v1"));
      const one = (await headOf(s.checkout))!;
      const since = s.pg.log().length;
      const bad = await s.repo.commit({ "compose.yaml": composeFile({ command: ["/bin/sh", "-c", "exit 3"] }) }, "exits at once");
      await s.pg.waitForLog(new RegExp(`msg=deployed service=${s.name} commit=${one.slice(0, 12)} trigger=rollback`), { since });
      expect(await s.pg.signal("SIGTERM")).toBe(0);

      // Same --dir, a new process: the history and the bad commit are remembered.
      const pg = await env.pgod([s.spec], { tag: "restarted" });
      const again: Served = { ...s, pg, port: (await sshListening(pg)).port };
      await pg.waitForLog(new RegExp(`msg=deployed service=${s.name} commit=${one.slice(0, 12)} trigger=start`));
      const h = clean(await pgoctl(again, `${s.name}//history`));
      expect({ code: h.code, stderr: h.stderr }).toEqual({ code: 0, stderr: "" });
      const lines = h.stdout.trimEnd().split("\n");
      const row = (commit: string, trigger: string, result: string): RegExp =>
        new RegExp(`^\\d{4}-\\d\\d-\\d\\dT\\S+Z  ${commit.slice(0, 12)}  ${trigger}\\s+${result}\\s+\\d+\\.\\ds`);
      // Newest first: this start, the rollback's deploy, the rolled-back commit, the first start.
      expect(lines).toHaveLength(4);
      expect(lines[0]).toMatch(row(one, "start", "deployed"));
      expect(lines[1]).toMatch(row(one, "rollback", "deployed"));
      expect(lines[2]).toMatch(row(bad, "poll", "rolled back"));
      expect(lines[2]).toContain("exited");
      expect(lines[3]).toMatch(row(one, "start", "deployed"));
      const last2 = clean(await pgoctl(again, `${s.name}//history`, "2"));
      expect(last2.stdout.trimEnd().split("\n")).toEqual(lines.slice(0, 2));
      expect((await statusOf(again))["rolled back"]).toStartWith(bad);

      // A newer commit deploys; then rollback to the first one pins it.
      const two = await s.repo.commit({ "compose.yaml": serving("v2") }, "v2");
      await waitFor("the v2 page", () => page(s.name), (p) => p === "v2");
      await pg.waitForLog(new RegExp(`msg=deployed service=${s.name} commit=${two.slice(0, 12)} `));
      const rb = clean(await pgoctl(again, `${s.name}//rollback`, one.slice(0, 10)));
      expect(rb.code).toBe(0);
      expect(await headOf(s.checkout)).toBe(one);
      expect(await page(s.name)).toBe("v1");
      const pinnedAt = await waitRunning(s.name);
      const pinned = await statusOf(again);
      expect(pinned["pinned"]).toStartWith(one);
      expect(pinned["commit"]).toBe(one);

      // While pinned, a pushed commit is pulled neither by sync nor by the next poll.
      const three = await s.repo.commit({ "compose.yaml": serving("v3") }, "v3");
      const sync = clean(await pgoctl(again, `${s.name}//sync`));
      expect(sync).toEqual({ code: 0, stdout: `pinned at ${one.slice(0, 12)}: "unpin" first to pull new commits\n`, stderr: "" });
      const synced = Date.now();
      await waitFor("a poll after the sync", () => statusOf(again), (st) => Date.parse(st["last poll"] ?? "") > synced);
      expect(await headOf(s.checkout)).toBe(one);
      expect((await runningOf(s.name)).map((c) => c.id)).toEqual([pinnedAt.id]);
      expect(await page(s.name)).toBe("v1");

      const un = clean(await pgoctl(again, `${s.name}//unpin`));
      expect(un).toEqual({ code: 0, stdout: "unpinned: new commits are pulled again\n", stderr: "" });
      await waitFor("the checkout at v3", () => headOf(s.checkout), (c) => c === three);
      await waitFor("the v3 page", () => page(s.name), (p) => p === "v3");
      expect((await statusOf(again))["pinned"]).toBe("no");
    });
  });

  test.concurrent("unsigned, wrongly signed and replayed webhooks change nothing", async () => {
    await scenario("webhook refused", async (env) => {
      const secret = randomId(32);
      const s = await serve(env, "hookbad", composeFile({ env: { VERSION: "1" } }), {
        extra: `webhook_secret = "${secret}"\n`,
        args: ["-t", QUIET_INTERVAL, "--webhook", "127.0.0.1:0"],
      });
      const address = await webhookAddress(s.pg);
      const first = await waitRunning(s.name);
      // Each look at the remote: an ls-remote at a poll, a fetch straight away for a webhook.
      const follows = new RegExp(`msg=exec argv="git (ls-remote|fetch) [^"]*" cwd=${join(s.pg.dir, s.name)} `);
      expect(s.pg.lines(follows)).toHaveLength(1);
      // A commit waits on the remote: any sync would deploy it.
      const commit = await s.repo.commit({ "compose.yaml": composeFile({ env: { VERSION: "2" } }) }, "version 2");

      const wrong = await post(address, s.name, pushEvent(`${secret}-wrong`, commit));
      const unsigned = await post(address, s.name, pushEvent(null, commit));
      expect([wrong.status, unsigned.status]).toEqual([401, 401]);
      const unchanged = async (): Promise<{ follows: number; ids: string[] }> => ({
        follows: s.pg.lines(follows).length,
        ids: (await containersOf(s.name)).map((c) => c.id),
      });
      await holdsFor("no sync and the same container", 1500, unchanged, (u) => u.follows === 1 && u.ids.join() === first.id);
      expect(s.pg.lines(/msg="webhook refused: signature does not verify"/)).toHaveLength(2);

      // The listener does work: the good one deploys the commit ...
      const good = pushEvent(secret, commit);
      expect(await post(address, s.name, good)).toEqual({ status: 202, text: "sync triggered" });
      await s.pg.waitForLog(new RegExp(`msg=deployed service=${s.name} commit=${commit.slice(0, 12)} trigger=webhook`));
      const second = await waitRunning(s.name);
      expect(second.id).not.toBe(first.id);

      // ... and its replay (same delivery and body) changes nothing, even with a newer commit waiting.
      await s.repo.commit({ "compose.yaml": composeFile({ env: { VERSION: "3" } }) }, "version 3");
      expect(await post(address, s.name, good)).toEqual({ status: 409, text: "already delivered" });
      await holdsFor("no further sync after the replay", 1500, unchanged, (u) => u.follows === 2 && u.ids.join() === second.id);
      expect(await headOf(s.checkout)).toBe(commit);

      // ... and after a restart too: the deliveries seen are kept under --dir/.state.
      await s.pg.stop();
      const again = await env.pgod([s.spec], { tag: "again", args: ["-t", QUIET_INTERVAL, "--webhook", "127.0.0.1:0"] });
      const address2 = await webhookAddress(again);
      const fetches = new RegExp(`msg=exec argv="git fetch [^"]*" cwd=${join(s.pg.dir, s.name)} `);
      const fetchesBefore = again.lines(fetches).length;
      expect(await post(address2, s.name, good)).toEqual({ status: 409, text: "already delivered" });
      expect(again.lines(/msg="webhook refused: replayed"/)).toHaveLength(1);
      expect(again.lines(fetches)).toHaveLength(fetchesBefore);
    });
  });

  test.concurrent("sync over ssh deploys a pushed commit at once", async () => {
    await scenario("sync", async (env) => {
      const s = await serve(env, "sync", composeFile({ env: { VERSION: "1" } }), { args: ["-t", QUIET_INTERVAL] });
      const before = await waitRunning(s.name);
      const commit = await s.repo.commit({ "compose.yaml": composeFile({ env: { VERSION: "2" } }) }, "version 2");
      const r = await openssh(s, `${s.name}//sync`);
      expect(r).toEqual({ code: 0, stdout: `at ${commit.slice(0, 12)}: deployed\n`, stderr: "" });
      // sync answers once the deploy is done: no waiting here.
      expect(await headOf(s.checkout)).toBe(commit);
      const cs = await runningOf(s.name);
      expect(cs).toHaveLength(1);
      expect(cs[0]!.id).not.toBe(before.id);
      expect(s.pg.lines(new RegExp(`msg=deployed service=${s.name} commit=${commit.slice(0, 12)} trigger=pgoctl`))).toHaveLength(1);
    });
  });
});
