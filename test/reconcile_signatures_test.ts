import { afterEach, beforeAll, afterAll, expect, test } from "bun:test";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ServiceConfig } from "../src/config.ts";
import { gitDirOf } from "../src/git.ts";
import { readHistory } from "../src/history.ts";
import { memoryLogger } from "../src/log.ts";
import { ServiceWorker } from "../src/reconcile.ts";
import type { ReconcileDeps } from "../src/reconcile.ts";
import { ManualClock, Semaphore } from "../src/scheduler.ts";
import { readState } from "../src/state.ts";
import { checkoutGit, COMPOSE, FakeDocker, git, rootUsers, tempDir, TestRepo } from "./helpers.ts";

const cleanups: (() => void)[] = [];
afterEach(() => cleanups.splice(0).forEach((f) => f()));
const keyDir = tempDir();
afterAll(() => rmSync(keyDir, { recursive: true, force: true }));
const key = (n: string): string => join(keyDir, n);

beforeAll(() => {
  for (const n of ["alice", "mallory"]) Bun.spawnSync(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", n, "-f", key(n)]);
});

/** Commits files in the repository's work clone, signed by `signer` (or unsigned), and pushes. */
function commit(repo: TestRepo, files: Record<string, string>, signer?: string, push = true): string {
  for (const [p, c] of Object.entries(files)) writeFileSync(join(repo.work, p), c);
  git(repo.work, "add", "-A");
  const sign = signer ? ["-c", "gpg.format=ssh", "-c", `user.signingkey=${key(signer)}`] : [];
  git(repo.work, ...sign, "commit", "--quiet", "--allow-empty", ...(signer ? ["-S"] : []), "-m", `change ${Math.random()}`);
  if (push) git(repo.work, "push", "--quiet", "--force", "origin", "HEAD:main");
  return git(repo.work, "rev-parse", "HEAD");
}

function setup() {
  const root = tempDir();
  cleanups.push(() => rmSync(root, { recursive: true, force: true }));
  const repo = new TestRepo(join(root, "repo"), { "compose.yaml": COMPOSE, "ssh/alice.pub": readFileSync(`${key("alice")}.pub`, "utf8") });
  const trustRoot = git(repo.work, "rev-parse", "HEAD");
  const docker = new FakeDocker(root);
  const deps: ReconcileDeps = {
    runner: docker.runner(), users: rootUsers(join(root, "home")), containers: docker.containers(), logger: memoryLogger(),
    clock: new ManualClock(1_000_000), random: () => 0, slots: new Semaphore(4), dir: join(root, "dir"), datadir: join(root, "data"),
    intervalMs: 60_000, settleMs: 0,
  };
  Bun.spawnSync(["mkdir", "-p", deps.dir, join(root, "home")]);
  const svc = (extra: Partial<ServiceConfig> = {}): ServiceConfig => ({
    name: "web", user: "root", repository: repo.remote, branch: "main", registries: [], env: {}, envKeys: [], urls: [],
    healthTimeoutMs: 120_000, line: 1, verify: "commits", trustRoot, ...extra,
  });
  const worker = new ServiceWorker(svc(), deps);
  return { repo, docker, deps, worker, svc, trustRoot, checkout: join(deps.dir, "web"), stateFile: join(deps.dir, ".state", "web", "state.json") };
}

const compose = (n: number): Record<string, string> => ({ "compose.yaml": `${COMPOSE}    environment: [N=${n}]\n` });

test("a signed commit deploys, an unsigned one is held with its reason while what runs keeps running, and the next signed one deploys", async () => {
  const { worker, docker, repo, checkout, stateFile } = setup();
  await worker.cycle("start");
  expect(worker.status().lastResult).toBe("deployed");
  const signed = commit(repo, compose(1), "alice");
  await worker.cycle("poll");
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(signed);
  expect(worker.status().lastResult).toBe("deployed");
  expect(readState(stateFile).verified?.last).toBe(signed);

  docker.clear();
  const unsigned = commit(repo, compose(2));
  await worker.cycle("poll");
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(signed);
  expect(docker.composeCalls()).toEqual([]);
  expect(worker.status()).toMatchObject({ lastResult: "unverified", unverified: expect.stringContaining("unsigned") });
  expect(worker.status().lastError).toContain(`Refused commit ${unsigned.slice(0, 12)}: not verified: unsigned`);
  const verdict = await worker.check();
  expect(verdict.commit).toBe(unsigned);
  expect(verdict.refusal).toContain("not verified: unsigned");
  const h = await readHistory(worker.historyFile);
  expect(h.at(-1)).toMatchObject({ commit: unsigned, result: "unverified", detail: expect.stringContaining("unsigned") });

  const next = commit(repo, compose(3), "alice");
  await worker.cycle("poll");
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(next);
  expect(worker.status().lastResult).toBe("deployed");
  expect(worker.status().unverified).toBeUndefined();
  expect((await worker.check()).refusal).toBeNull();
});

test("a first clone whose branch head does not verify deploys the trust root instead", async () => {
  const { worker, repo, checkout, trustRoot, docker } = setup();
  const stranger = commit(repo, compose(1), "mallory");
  await worker.cycle("start");
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(trustRoot);
  expect(docker.composeCalls().some((c) => c.startsWith("up"))).toBe(true);
  expect(worker.status().unverified).toContain("unknown key");
  const h = await readHistory(worker.historyFile);
  expect(h.map((e) => `${e.commit.slice(0, 7)} ${e.result}`)).toEqual([`${stranger.slice(0, 7)} unverified`, `${trustRoot.slice(0, 7)} deployed`]);
});

test("a trust root the repository does not have deploys nothing and names trust_root", async () => {
  const { repo, deps, svc, docker } = setup();
  commit(repo, compose(1), "alice");
  const worker = new ServiceWorker(svc({ trustRoot: "0123456789abcdef0123456789abcdef01234567" }), deps);
  await worker.cycle("start");
  await worker.cycle("poll");
  expect(docker.composeCalls()).toEqual([]);
  // Nor does pgoctl up: the checkout holds the branch's newest commit, which nothing verified.
  expect(await worker.exclusive(() => worker.deployNow("pgoctl"))).toBe(65);
  expect(docker.composeCalls().filter((c) => c.startsWith("up"))).toEqual([]);
  await worker.cycle("poll");
  expect(worker.status().lastError).toBe(
    `Cannot deploy "web": trust_root 0123456789abcdef0123456789abcdef01234567 is not a commit of the repository, so no commit can be verified; nothing is deployed until "trust_root" names a commit of the branch`,
  );
});

test("after a restart the last verified commit is the anchor: a force-push back to an older commit is held", async () => {
  const { repo, deps, svc, checkout } = setup();
  const worker = new ServiceWorker(svc(), deps);
  await worker.cycle("start");
  const older = commit(repo, compose(1), "alice");
  await worker.cycle("poll");
  const newer = commit(repo, compose(2), "alice");
  await worker.cycle("poll");
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(newer);
  git(repo.work, "push", "--quiet", "--force", "origin", `${older}:main`);
  const again = new ServiceWorker(svc(), deps);
  await again.cycle("start");
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(newer);
  expect(again.status().unverified).toContain("not a descendant");
});

test("pgoctl rollback goes only to a commit that verified when it was deployed", async () => {
  const { worker, repo, checkout } = setup();
  await worker.cycle("start");
  const first = commit(repo, compose(1), "alice");
  await worker.cycle("poll");
  const unsigned = commit(repo, compose(2));
  await worker.cycle("poll");
  commit(repo, compose(3), "alice");
  await worker.cycle("poll");
  // The unsigned commit is in the checkout's object store (it was fetched) but never verified.
  await expect(worker.exclusive(() => worker.rollbackTo(unsigned))).rejects.toThrow(`Cannot roll back to ${unsigned.slice(0, 12)}: it did not verify`);
  expect(await worker.exclusive(() => worker.rollbackTo(first))).toBe(0);
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(first);
});

test("an unverified push undone by a force-push back to what runs leaves nothing unverified", async () => {
  const { worker, repo, checkout } = setup();
  await worker.cycle("start");
  const signed = commit(repo, compose(1), "alice");
  await worker.cycle("poll");
  const unsigned = commit(repo, compose(2));
  await worker.cycle("poll");
  const verdict = await worker.check();
  expect(verdict.commit).toBe(unsigned);
  expect(verdict.refusal).toContain("not verified: unsigned");
  git(repo.work, "push", "--quiet", "--force", "origin", `${signed}:main`);
  await worker.cycle("poll");
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(signed);
  expect(worker.status().unverified).toBeUndefined();
  expect((await worker.check()).refusal).toBeNull();
});

test("a checkout cloned again after damage goes back to the last verified commit, not the branch's newest", async () => {
  const { worker, repo, checkout, docker } = setup();
  await worker.cycle("start");
  const signed = commit(repo, compose(1), "alice");
  await worker.cycle("poll");
  const unsigned = commit(repo, compose(2));
  await worker.cycle("poll");
  rmSync(gitDirOf(checkout), { recursive: true, force: true });
  await worker.cycle("poll"); // finds the damage
  docker.clear();
  await worker.cycle("poll"); // clones again
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(signed);
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).not.toBe(unsigned);
  expect(docker.composeCalls().some((c) => c.startsWith("up"))).toBe(true);
  expect(worker.status().unverified).toContain("unsigned");
});
