/**
 * The processes a reconcile cycle starts, counted: they are what an idle pgod costs and most of
 * what a deploy takes on top of `docker compose up` (bench/README.md).
 */
import { afterEach, expect, test } from "bun:test";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { Runner } from "../src/exec.ts";
import { memoryLogger } from "../src/log.ts";
import { ServiceWorker } from "../src/reconcile.ts";
import type { ReconcileDeps } from "../src/reconcile.ts";
import { UnsupportedRemote } from "../src/refs.ts";
import { ManualClock, Semaphore } from "../src/scheduler.ts";
import { serveGitHttp } from "./git_http.ts";
import { FakeDocker, rootUsers, tempDir, TestRepo } from "./helpers.ts";

const cleanups: (() => void)[] = [];
afterEach(() => cleanups.splice(0).forEach((f) => f()));

function setup(o: { http?: boolean; remoteRefs?: ReconcileDeps["remoteRefs"] } = {}) {
  const root = tempDir();
  cleanups.push(() => rmSync(root, { recursive: true, force: true }));
  const repo = new TestRepo(join(root, "repo"));
  const server = o.http ? serveGitHttp(join(root, "repo")) : null;
  if (server) cleanups.push(() => void server.stop());
  const docker = new FakeDocker(root);
  const started: string[] = [];
  const inner = docker.runner();
  const runner: Runner = (argv, o) => {
    started.push(argv.join(" "));
    return inner(argv, o);
  };
  const dir = join(root, "dir");
  Bun.spawnSync(["mkdir", "-p", dir, join(root, "home")]);
  const worker = new ServiceWorker(
    { name: "web", user: "root", repository: server ? `${server.base}/remote.git` : repo.remote, branch: "main", registries: [], env: {}, envKeys: [], urls: [], healthTimeoutMs: 120_000, line: 1 },
    {
      runner, users: rootUsers(join(root, "home")), containers: docker.containers(), logger: memoryLogger(),
      clock: new ManualClock(1_000_000), random: () => 0, slots: new Semaphore(4), dir, datadir: join(root, "data"),
      intervalMs: 60_000, settleMs: 0, ...(o.remoteRefs ? { remoteRefs: o.remoteRefs } : {}),
    },
  );
  return { repo, worker, started, server };
}

/** The program and subcommand of each started process: "git ls-remote", "docker compose up". */
const commands = (started: string[]): string[] =>
  started.map((a) => {
    const w = a.split(" ").filter((x) => !x.startsWith("-") && !x.includes("=") && !x.includes("/"));
    return w[0] === "docker" ? `docker compose ${a.match(/ (pull|up|config|down)\b/)?.[1]}` : `${w[0]} ${w[1]}`;
  });

test("an idle cycle starts exactly one process: git ls-remote", async () => {
  const { worker, started } = setup();
  await worker.cycle("start");
  started.length = 0;
  await worker.cycle("poll");
  expect(commands(started)).toEqual(["git ls-remote"]);
});

test("a compose file change starts 12 processes: one read of the file per commit, no worktree prune, no pull with nothing to pull (regression: 15)", async () => {
  const { worker, repo, started } = setup();
  await worker.cycle("start");
  started.length = 0;
  repo.commit({ "compose.yaml": readFileSync(join(repo.work, "compose.yaml"), "utf8") + "    environment: [A=1]\n" });
  await worker.cycle("poll");
  expect(commands(started)).toEqual([
    "git ls-remote", "git fetch", "git rev-parse", "git diff", "git cat-file",
    "git read-tree", "git checkout-index", // the commit's tree, to judge
    "chown 0:0", "git checkout", "git clean", // the checkout moves, cleaned of what a container wrote

    "docker compose up", "docker compose config",
  ]);
  expect(worker.status()).toMatchObject({ lastResult: "deployed", lastError: null });
});

test("a webhook or pgoctl sync fetches at once, without an ls-remote first", async () => {
  const { worker, repo, started } = setup();
  await worker.cycle("start");
  let last = "";
  for (const trigger of ["webhook", "pgoctl"] as const) {
    started.length = 0;
    last = repo.commit({ "README": `${trigger}\n` });
    await worker.cycle(trigger);
    // The compose file of both commits is read to learn whether README is one of its files.
    expect(commands(started)).toEqual(["git fetch", "git rev-parse", "git diff", "git cat-file", "git cat-file", "chown 0:0", "git checkout", "git clean"]);
  }
  expect(worker.status()).toMatchObject({ commit: last, lastError: null });
});

test("an idle cycle of a smart HTTP remote starts no process at all, and a push is still followed", async () => {
  const { worker, repo, started, server } = setup({ http: true });
  await worker.cycle("start");
  started.length = 0;
  const asked = server!.requests.length;
  await worker.cycle("poll");
  await worker.cycle("poll");
  expect(started).toEqual([]);
  expect(server!.requests.length - asked).toBe(4); // two polls, each an advertisement and an ls-refs
  const next = repo.commit({ README: "x\n" });
  await worker.cycle("poll");
  expect(commands(started)[0]).toBe("git fetch");
  expect(worker.status()).toMatchObject({ commit: next, lastError: null });
});

test("an HTTP remote that does not speak smart HTTP is polled with git ls-remote from then on", async () => {
  let asked = 0;
  const { worker, started } = setup({
    http: true,
    remoteRefs: async () => {
      asked++;
      throw new UnsupportedRemote("it answered with \"text/html\"");
    },
  });
  await worker.cycle("start");
  started.length = 0;
  await worker.cycle("poll");
  await worker.cycle("poll");
  expect(asked).toBe(1);
  expect(commands(started)).toEqual(["git ls-remote", "git ls-remote"]);
});
