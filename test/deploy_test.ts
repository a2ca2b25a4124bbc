import { afterAll, expect, test } from "bun:test";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ServiceConfig } from "../src/config.ts";
import { Deployer } from "../src/deploy.ts";
import { refuse } from "../src/follow.ts";
import type { Git } from "../src/git.ts";
import { memoryLogger } from "../src/log.ts";
import { ManualClock, Semaphore } from "../src/scheduler.ts";
import type { DeployResult, Scope, ServiceStatus, Turn } from "../src/service.ts";
import { ServiceRecord } from "../src/service_record.ts";
import { isRoot } from "../src/users.ts";
import { Workspace } from "../src/workspace.ts";
import { FakeDocker, rootUsers, tempDir } from "./helpers.ts";

const root = tempDir("pgo-deploy-");
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;

/** A scope for service web whose checkout holds `files`, with the fake docker. */
function scope(files: Record<string, string>) {
  const base = join(root, `d${n++}`);
  const dir = join(base, "dir");
  const checkout = join(dir, "web");
  mkdirSync(checkout, { recursive: true });
  for (const [f, text] of Object.entries(files)) writeFileSync(join(checkout, f), text);
  const docker = new FakeDocker(base);
  const log = memoryLogger();
  const results: DeployResult[] = [];
  const svc: ServiceConfig = { name: "web", user: "root", repository: "/r", branch: "main", registries: [], env: {}, envKeys: [], urls: [], healthTimeoutMs: 1000, line: 1 };
  const status: ServiceStatus = {
    name: "web", commit: null, deployedAt: null, lastResult: null, lastError: null, stopFile: false,
    nextPollAt: null, lastPollAt: null, hold: null, pinned: null, good: null, bad: null, refused: null,
  };
  const s: Scope = {
    svc, log, checkout, stopFile: join(dir, "web.stop"), status, signal: new AbortController().signal,
    record: new ServiceRecord(join(dir, ".state"), svc, log),
    d: {
      runner: docker.runner(), users: rootUsers(join(base, "home")), containers: docker.containers(), logger: log,
      clock: new ManualClock(5_000), random: () => 0, slots: new Semaphore(1), dir, datadir: join(base, "data"), intervalMs: 60_000,
      settleMs: 0, onDeploy: (_s, r) => void results.push(r),
    },
  };
  const ws = new Workspace(s);
  // No git command runs when the checkout is not moved (restored) and no commit is judged in a stage.
  const turn: Turn = { a: { name: "root", uid: 0, gid: 0, groups: [0], home: base }, git: {} as Git };
  return { s, ws, deployer: new Deployer(s, ws), turn, docker, results };
}

test("Deployer.deploy() returns 75 and the stop file's message while the stop file exists, and runs no compose", async () => {
  const { s, deployer, turn, docker } = scope({ "compose.yaml": "services:\n  web:\n    image: x\n" });
  writeFileSync(s.stopFile, "");
  const said: string[] = [];
  const r = await deployer.deploy(turn, "pgoctl", null, { restored: true, io: { onStderr: (c) => void said.push(new TextDecoder().decode(c)) } });
  expect(r).toEqual({ code: 75, error: `Cannot deploy "web": the stop file "${s.stopFile}" exists`, head: null, deployed: false, retry: false });
  expect(said.join("")).toContain("the stop file");
  expect(docker.composeCalls()).toEqual([]);
});

test("Deployer.deploy() refuses a checkout without a compose file with 65, and returns the refusal the loop keeps", async () => {
  const { s, deployer, turn, docker, results } = scope({});
  const r = await deployer.deploy(turn, "poll", null, { restored: true });
  expect(r.code).toBe(65);
  expect(r.refusal).toBe(r.error);
  expect(r.error).toStartWith("Refused commit unknown: Cannot find a compose file: looked for");
  expect(s.status).toMatchObject({ lastResult: "refused", lastError: r.error });
  expect(results).toEqual(["refused"]);
  expect((await s.record.history()).map((e) => e.result)).toEqual(["refused by policy"]);
  expect(docker.composeCalls()).toEqual([]);
});

test("Deployer.deploy() brings the checkout up and reports it deployed, with the status and the history", async () => {
  const { s, deployer, turn, docker, results } = scope({ "compose.yaml": "services:\n  web:\n    image: pgo-busybox:1\n    pull_policy: never\n" });
  const r = await deployer.deploy(turn, "pgoctl", null, { restored: true });
  expect(r).toEqual({ code: 0, error: null, head: null, deployed: true, retry: false, refusal: null });
  expect(docker.composeCalls().filter((c) => c.startsWith("up "))).toHaveLength(1);
  expect(s.status).toMatchObject({ lastResult: "deployed", lastError: null, deployedAt: 5_000 });
  expect(results).toEqual(["deployed"]);
  expect((await s.record.history()).map((e) => e.result)).toEqual(["deployed"]);
});

test("refuse() records a refusal in the status, the metric and the history, and returns the message kept as the error", async () => {
  const { s, results } = scope({});
  const c = "c".repeat(40);
  const r = await refuse(s, c, "poll", "not verified: unsigned: no signature", "unverified");
  expect(r).toEqual({ commit: c, message: `Refused commit ${c.slice(0, 12)}: not verified: unsigned: no signature` });
  expect(s.status).toMatchObject({ lastResult: "unverified", lastError: r.message, refused: { commit: c, reason: "not verified: unsigned: no signature" } });
  expect(results).toEqual(["unverified"]);
  expect((await s.record.history()).map((e) => `${e.commit.slice(0, 1)} ${e.result}`)).toEqual(["c unverified"]);
});

test("isRoot() is the one notion of a root service: the account named root", () => {
  expect(isRoot({ name: "root", uid: 0, gid: 0, groups: [0], home: "/root" })).toBe(true);
  expect(isRoot({ name: "app", uid: 1000, gid: 1000, groups: [1000], home: "/home/app" })).toBe(false);
});
