/**
 * Faults of the git remote under a service pgod has already deployed: the remote moved away,
 * refusing connections, hanging, answering 401. Each keeps the checkout and the running
 * container, retries with backoff (2x, then 4x the 2 s interval), shows the error in the log and
 * in `status`, finishes every cycle (pgod's own timeout ends a hanging git), never holds up
 * another service of the same pgod, and converges once the remote is back. The tests share no
 * state and run concurrently. Run `bash scripts/build.sh` first.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { rename } from "node:fs/promises";
import { join } from "node:path";
import {
  containersOf, headOf, lsRemote, preflight, runningOf, scenario, statusOf, sweepRun, uniqueName, waitFor, waitRunning,
} from "../e2e/harness.ts";
import type { Env } from "../e2e/harness.ts";
import { serve, version, versionOf } from "./faults.ts";
import { timeOf } from "../kit/pgod.ts";
import type { Served } from "./faults.ts";
import { GitFront, HttpRemote } from "./remotes.ts";

/** pgod's timeout for network git commands in these tests (PGO_GIT_TIMEOUT_MS). */
const GIT_TIMEOUT_MS = 3000;
/** The poll interval the harness gives pgod (`-t 2s`). */
const INTERVAL_MS = 2000;

beforeAll(() => preflight());
afterAll(sweepRun);

/** One fault: how pgod reaches the remote, how to break and mend it, and the error it must show. */
interface Fault {
  tag: string;
  repository(env: Env, s: { bare: string }): Promise<string>;
  breakIt(): Promise<void>;
  mend(): Promise<void>;
  /** Pushes a commit; false when the remote cannot take one while broken. */
  pushWhileBroken: boolean;
  afterPush?(): Promise<void>;
  error: RegExp;
}

/**
 * Deploys a service, breaks its remote, and checks what is kept, the backoff between attempts,
 * the error in log and status, and that a commit pushed meanwhile is deployed once it is mended.
 */
async function survives(env: Env, f: Fault): Promise<void> {
  // A neighbour with a healthy remote, in the same pgod: the fault must not hold it up.
  const neighbour = { name: uniqueName(`${f.tag}-nb`), repo: await env.repo({ "compose.yaml": version(1) }) };
  const s: Served = await serve(env, f.tag, {
    repository: (repo) => f.repository(env, repo),
    env: { ...process.env, PGO_GIT_TIMEOUT_MS: String(GIT_TIMEOUT_MS) },
    others: [{ name: neighbour.name, repository: neighbour.repo.bare }],
  });
  const nbFirst = await waitRunning(neighbour.name);
  const { pg, name, checkout } = s;
  const head = await headOf(checkout);
  expect(head).not.toBeNull();

  const since = pg.log().length;
  await f.breakIt();
  if (f.pushWhileBroken) {
    await s.repo.commit({ "compose.yaml": version(2) }, "version 2 while the remote is broken");
    await f.afterPush?.();
  }
  await neighbour.repo.commit({ "compose.yaml": version(2) }, "neighbour version 2");
  const nb = await waitFor(
    "the neighbour's container of version 2 while the fault lasts",
    () => containersOf(neighbour.name),
    (cs) => cs.length === 1 && cs[0]!.state === "running" && cs[0]!.id !== nbFirst.id,
    { timeoutMs: 60_000 },
  );
  expect(await versionOf(nb[0]!.id)).toBe("2");
  const warn = new RegExp(`warn msg="cannot follow the remote, keeping what runs" service=${name} `);
  // Four attempts fail: three waits between them show the backoff and its cap.
  const failures = await pg.waitForLog(warn, { since, count: 4, timeoutMs: 90_000 });
  const attempts = pg.lines(lsRemote(pg.dir, name), since);
  // The first attempt after the fault may have started before it; take attempts after each failure.
  const next = (t: number): number => attempts.map(timeOf).find((a) => a > t) ?? Infinity;
  const waits = failures.slice(0, 3).map((l) => next(timeOf(l)) - timeOf(l));
  // Streak 1: 2x the interval (plus up to 50% jitter); streak 2 and later: 4x, and no more.
  expect(waits[0]!).toBeGreaterThanOrEqual(2 * INTERVAL_MS - 50);
  expect(waits[1]!).toBeGreaterThanOrEqual(4 * INTERVAL_MS - 50);
  expect(waits[2]!).toBeGreaterThanOrEqual(4 * INTERVAL_MS - 50);
  // At most 4x plus jitter (12 s) and the cycle's start; 8x, uncapped, would be 16 s at least.
  expect(waits[2]!).toBeLessThan(8 * INTERVAL_MS);
  for (const l of failures) expect(l).toMatch(f.error);
  // Every attempt ends: within pgod's git timeout plus the grace before SIGKILL (5 s) and some slack.
  const before = (t: number): number => attempts.map(timeOf).filter((a) => a <= t).at(-1) ?? -Infinity;
  for (const l of failures) expect(timeOf(l) - before(timeOf(l))).toBeLessThan(GIT_TIMEOUT_MS + 10_000);

  // What runs and what is checked out stay as they were.
  expect((await runningOf(name)).map((c) => c.id)).toEqual([s.first.id]);
  expect(await headOf(checkout)).toBe(head);
  expect(existsSync(join(checkout, "compose.yaml"))).toBe(true);
  expect(pg.exitCode).toBeNull();
  expect(pg.lines(new RegExp(`(warn|error) msg=.* service=${neighbour.name} `))).toEqual([]);
  const st = await statusOf(s);
  expect(st["commit"]).toBe(head!);
  expect(st["last error"]).toMatch(f.error);
  expect(st["last result"]).toBe("deployed");

  const mended = pg.log().length;
  await f.mend();
  if (!f.pushWhileBroken) await s.repo.commit({ "compose.yaml": version(2) }, "version 2 after the remote is back");
  await f.afterPush?.();
  const after = await waitFor(
    "the container of version 2 once the remote is back",
    () => containersOf(name),
    (cs) => cs.length === 1 && cs[0]!.state === "running" && cs[0]!.id !== s.first.id,
    { timeoutMs: 60_000 },
  );
  expect(await versionOf(after[0]!.id)).toBe("2");
  await pg.waitForLog(new RegExp(`msg=deployed service=${name} `), { since: mended });
  expect((await statusOf(s))["last error"]).toBe("none");
}

describe("git remote faults", () => {
  test.concurrent("a remote moved away keeps the checkout and the container, backs off, and is followed again once it is back", async () => {
    await scenario("remote gone", async (env) => {
      let bare = "";
      await survives(env, {
        tag: "gone",
        repository: async (_env, repo) => (bare = repo.bare),
        breakIt: () => rename(bare, `${bare}.away`),
        mend: () => rename(`${bare}.away`, bare),
        pushWhileBroken: false,
        error: /does not appear to be a git repository|Could not read from remote repository/,
      });
    });
  });

  test.concurrent("a remote refusing connections keeps the checkout and the container, backs off, and is followed again once it listens", async () => {
    await scenario("remote refuses", async (env) => {
      let front: GitFront | null = null;
      await survives(env, {
        tag: "refused",
        repository: async (e, repo) => {
          front = await GitFront.start(repo.bare);
          e.defer(() => front!.close());
          return front.url;
        },
        breakIt: () => front!.set("refuse"),
        mend: () => front!.set("serve"),
        pushWhileBroken: true,
        error: /Connection refused/,
      });
      expect(front!.accepted.refuse).toBe(0);
    });
  });

  test.concurrent("a remote that accepts and never answers is cut off by pgod's timeout, and every cycle finishes", async () => {
    await scenario("remote hangs", async (env) => {
      let front: GitFront | null = null;
      await survives(env, {
        tag: "hang",
        repository: async (e, repo) => {
          front = await GitFront.start(repo.bare);
          e.defer(() => front!.close());
          return front.url;
        },
        breakIt: () => front!.set("hang"),
        mend: async () => {
          // Every hanging ls-remote was killed: no connection is left open once the last attempt ended.
          expect(front!.accepted.hang).toBeGreaterThanOrEqual(4);
          await waitFor("no hanging connection left open", () => front!.open, (n) => n === 0, { timeoutMs: 10_000 });
          await front!.set("serve");
        },
        pushWhileBroken: true,
        error: /git ls-remote --heads\\?" failed: timed out after \d+ ms/,
      });
    });
  });

  test.concurrent("a remote answering 401 keeps the checkout and the container, backs off, and is followed again once it serves", async () => {
    await scenario("remote 401", async (env) => {
      let http: HttpRemote | null = null;
      await survives(env, {
        tag: "auth",
        repository: async (e, repo) => {
          http = await HttpRemote.start(repo.bare);
          e.defer(() => http!.close());
          return http.url;
        },
        breakIt: async () => {
          http!.mode = "unauthorized";
        },
        mend: async () => {
          http!.mode = "serve";
        },
        pushWhileBroken: true,
        afterPush: () => http!.refresh(),
        error: /could not read Username|Authentication failed|401/,
      });
      expect(http!.requests.unauthorized).toBeGreaterThanOrEqual(4);
    });
  });
});
