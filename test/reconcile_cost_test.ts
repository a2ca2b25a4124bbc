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
import { ManualClock, Semaphore } from "../src/scheduler.ts";
import { FakeDocker, rootUsers, tempDir, TestRepo } from "./helpers.ts";

const cleanups: (() => void)[] = [];
afterEach(() => cleanups.splice(0).forEach((f) => f()));

function setup() {
  const root = tempDir();
  cleanups.push(() => rmSync(root, { recursive: true, force: true }));
  const repo = new TestRepo(join(root, "repo"));
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
    { name: "web", user: "root", repository: repo.remote, branch: "main", registries: [], env: {}, envKeys: [], urls: [], healthTimeoutMs: 120_000, line: 1 },
    {
      runner, users: rootUsers(join(root, "home")), containers: docker.containers(), logger: memoryLogger(),
      clock: new ManualClock(1_000_000), random: () => 0, slots: new Semaphore(4), dir, datadir: join(root, "data"),
      intervalMs: 60_000, settleMs: 0,
    },
  );
  return { repo, worker, started };
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

test("a compose file change reads the file once per commit and prunes no worktree removed well (regression: it started 15 processes, now 13)", async () => {
  const { worker, repo, started } = setup();
  await worker.cycle("start");
  started.length = 0;
  repo.commit({ "compose.yaml": readFileSync(join(repo.work, "compose.yaml"), "utf8") + "    environment: [A=1]\n" });
  await worker.cycle("poll");
  expect(commands(started)).toEqual([
    "git ls-remote", "git fetch", "git rev-parse", "git diff", "git cat-file",
    "git worktree", "git worktree", "git worktree", // prune, add, remove
    "git checkout", "git clean",
    "docker compose pull", "docker compose up", "docker compose config",
  ]);
  expect(worker.status()).toMatchObject({ lastResult: "deployed", lastError: null });
});
