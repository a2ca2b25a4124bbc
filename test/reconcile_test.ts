import { afterEach, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ServiceConfig } from "../src/config.ts";
import { memoryLogger } from "../src/log.ts";
import { gitDirOf } from "../src/git.ts";
import { ServiceWorker } from "../src/reconcile.ts";
import type { ReconcileDeps } from "../src/reconcile.ts";
import { ManualClock, Semaphore } from "../src/scheduler.ts";
import { checkoutGit, COMPOSE as COMPOSE_WEB, FakeDocker, git, rootUsers, tempDir, TestRepo, waitFor } from "./helpers.ts";

const cleanups: (() => void)[] = [];
afterEach(() => cleanups.splice(0).forEach((f) => f()));

function service(name: string, repo: string, extra: Partial<ServiceConfig> = {}): ServiceConfig {
  return { name, user: "root", repository: repo, branch: "main", registries: [], env: {}, envKeys: [], urls: [], healthTimeoutMs: 120_000, line: 1, ...extra };
}

function setup(extra: Partial<ServiceConfig> = {}, files?: Record<string, string>) {
  const root = tempDir();
  cleanups.push(() => rmSync(root, { recursive: true, force: true }));
  const repo = new TestRepo(join(root, "repo"), files);
  const docker = new FakeDocker(root);
  const log = memoryLogger();
  const clock = new ManualClock(1_000_000);
  const deps: ReconcileDeps = {
    runner: docker.runner(), users: rootUsers(join(root, "home")), containers: docker.containers(), logger: log, clock,
    random: () => 0, slots: new Semaphore(4), dir: join(root, "dir"), datadir: join(root, "data"), intervalMs: 60_000,
    settleMs: 0,
  };
  Bun.spawnSync(["mkdir", "-p", deps.dir, join(root, "home")]);
  const worker = new ServiceWorker(service("web", repo.remote, extra), deps);
  return { root, repo, docker, log, clock, deps, worker, checkout: join(deps.dir, "web") };
}

test("a first cycle clones the branch and runs pull then up with the project name", async () => {
  const pulled = "services:\n  web:\n    image: registry.test/web:1\n";
  const { worker, docker, checkout, repo } = setup({}, { "compose.yaml": pulled });
  await worker.cycle("start");
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(git(repo.work, "rev-parse", "HEAD"));
  const calls = docker.calls().map((c) => c.argv);
  expect(calls[0]).toBe("compose --project-name web --file compose.yaml pull --quiet --ignore-buildable");
  expect(calls[1]).toBe("compose --project-name web --file compose.yaml up --detach --remove-orphans --quiet-pull");
  expect(worker.status()).toMatchObject({ lastResult: "deployed", lastError: null, commit: git(repo.work, "rev-parse", "HEAD") });
  expect(statSync(checkout).mode & 0o777).toBe(0o700);
});

test("a deploy skips docker compose pull when every image has pull_policy never or is built", async () => {
  const files = {
    "compose.yaml": "services:\n  web:\n    image: pgo-busybox:1\n    pull_policy: never\n  app:\n    build: ./app\n",
    "app/Dockerfile": "FROM scratch\n",
  };
  const { worker, docker, repo } = setup({}, files);
  await worker.cycle("start");
  expect(docker.calls().map((c) => c.argv).filter((a) => / (pull|up) /.test(a))).toEqual([
    "compose --project-name web --file compose.yaml up --detach --remove-orphans --quiet-pull",
  ]);

  // A service that may pull brings the pull back, before up.
  docker.clear();
  repo.commit({ "compose.yaml": `${files["compose.yaml"]}  cache:\n    image: registry.test/cache:7\n` });
  await worker.cycle("poll");
  expect(docker.calls().map((c) => c.argv).filter((a) => / (pull|up) /.test(a))).toEqual([
    "compose --project-name web --file compose.yaml pull --quiet --ignore-buildable",
    "compose --project-name web --file compose.yaml up --detach --remove-orphans --quiet-pull",
  ]);
});

test("an idle cycle runs no docker compose command at all", async () => {
  const { worker, docker } = setup();
  await worker.cycle("start");
  docker.clear();
  await worker.cycle("poll");
  expect(docker.calls()).toEqual([]);
  expect(worker.status().lastError).toBeNull();
});

test("a commit that changes only a README moves the checkout and runs no compose command", async () => {
  const { worker, docker, repo, checkout } = setup();
  await worker.cycle("start");
  docker.clear();
  const id = repo.commit({ "README.md": "hello\n" });
  await worker.cycle("poll");
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(id);
  expect(readFileSync(join(checkout, "README.md"), "utf8")).toBe("hello\n");
  expect(docker.composeCalls()).toEqual([]);
});

test("a commit that changes the compose file runs up again", async () => {
  const { worker, docker, repo } = setup();
  await worker.cycle("start");
  docker.clear();
  repo.commit({ "compose.yaml": readFileSync(join(repo.work, "compose.yaml"), "utf8") + "    environment: [A=1]\n" });
  await worker.cycle("poll");
  expect(docker.composeCalls().filter((c) => c.startsWith("up"))).toHaveLength(1);
});

test("a commit that changes an env_file the compose file names redeploys", async () => {
  const compose = "services:\n  web:\n    image: x\n    env_file: [conf/web.env]\n";
  const { worker, docker, repo } = setup({}, { "compose.yaml": compose, "conf/web.env": "A=1\n" });
  await worker.cycle("start");
  docker.clear();
  repo.commit({ "conf/web.env": "A=2\n" });
  await worker.cycle("poll");
  expect(docker.composeCalls().some((c) => c.startsWith("up"))).toBe(true);
});

test("a commit that changes a file an include: names redeploys", async () => {
  const { worker, docker, repo } = setup({}, { "compose.yaml": "include:\n  - sub/more.yaml\n", "sub/more.yaml": "services: {}\n" });
  await worker.cycle("start");
  docker.clear();
  repo.commit({ "sub/more.yaml": "services:\n  x:\n    image: y\n" });
  await worker.cycle("poll");
  expect(docker.composeCalls().some((c) => c.startsWith("up"))).toBe(true);
});

test("a configured compose file is used and its changes are detected", async () => {
  const { worker, docker, repo } = setup({ compose: "deploy/app.yaml" }, { "deploy/app.yaml": "services: {}\n" });
  await worker.cycle("start");
  expect(docker.calls()[0]!.argv).toContain("--file deploy/app.yaml");
  docker.clear();
  repo.commit({ "deploy/app.yaml": "services:\n  a:\n    image: b\n" });
  await worker.cycle("poll");
  expect(docker.composeCalls().some((c) => c.startsWith("up"))).toBe(true);
});

test("a force-pushed branch is followed", async () => {
  const { worker, repo, checkout } = setup();
  await worker.cycle("start");
  repo.commit({ "a.txt": "1" });
  await worker.cycle("poll");
  git(repo.work, "reset", "--quiet", "--hard", "HEAD~1");
  const rewritten = repo.commit({ "b.txt": "2" }, "rewritten");
  await worker.cycle("poll");
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(rewritten);
  expect(existsSync(join(checkout, "a.txt"))).toBe(false);
});

test("local edits in the checkout are discarded when a new commit arrives", async () => {
  const { worker, repo, checkout } = setup();
  await worker.cycle("start");
  writeFileSync(join(checkout, "compose.yaml"), "tampered\n");
  writeFileSync(join(checkout, "stray.txt"), "x");
  repo.commit({ "README.md": "x" });
  await worker.cycle("poll");
  expect(readFileSync(join(checkout, "compose.yaml"), "utf8")).toContain("pgo-busybox");
  expect(existsSync(join(checkout, "stray.txt"))).toBe(false);
});

test("missing containers are brought up again", async () => {
  const { worker, docker } = setup();
  await worker.cycle("start");
  rmSync(join(docker.bin, "state", "web"));
  docker.clear();
  await worker.cycle("poll");
  expect(docker.composeCalls().filter((c) => c.startsWith("up"))).toHaveLength(1);
  expect(docker.running()).toEqual(["web"]);
});

test("a stop file brings the service down and keeps it down until it is removed", async () => {
  const { worker, docker, deps } = setup();
  await worker.cycle("start");
  const stop = join(deps.dir, "web.stop");
  writeFileSync(stop, "");
  docker.clear();
  await worker.cycle("poll");
  expect(docker.composeCalls()).toEqual(["down --remove-orphans"]);
  expect(worker.status()).toMatchObject({ stopFile: true, lastResult: "stopped" });
  docker.clear();
  await worker.cycle("poll");
  expect(docker.composeCalls()).toEqual([]);
  rmSync(stop);
  await worker.cycle("poll");
  expect(docker.composeCalls().filter((c) => c.startsWith("up"))).toHaveLength(1);
  expect(worker.status()).toMatchObject({ stopFile: false, lastResult: "deployed" });
});

test("an unreachable remote keeps the checkout and the containers and says why", async () => {
  const { worker, docker, repo, checkout } = setup();
  await worker.cycle("start");
  const head = checkoutGit(checkout, "rev-parse", "HEAD");
  renameSync(repo.remote, repo.remote + ".gone");
  docker.clear();
  await worker.cycle("poll");
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(head);
  expect(existsSync(join(checkout, "compose.yaml"))).toBe(true);
  expect(docker.composeCalls()).toEqual([]);
  expect(worker.status().lastError).toContain("ls-remote");
  renameSync(repo.remote + ".gone", repo.remote);
  const next = repo.commit({ "compose.yaml": "services: {}\n" });
  await worker.cycle("poll");
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(next);
  expect(worker.status().lastError).toBeNull();
});

test("an unreachable remote still lets self-healing bring containers back", async () => {
  const { worker, docker, repo } = setup();
  await worker.cycle("start");
  renameSync(repo.remote, repo.remote + ".gone");
  rmSync(join(docker.bin, "state", "web"));
  docker.clear();
  await worker.cycle("poll");
  expect(docker.composeCalls().filter((c) => c.startsWith("up"))).toHaveLength(1);
});

test("a failed first clone is retried at the next cycle", async () => {
  const { worker, docker, repo, checkout } = setup();
  renameSync(repo.remote, repo.remote + ".gone");
  await worker.cycle("start");
  expect(worker.status().lastError).toContain("clone");
  expect(existsSync(checkout)).toBe(false);
  renameSync(repo.remote + ".gone", repo.remote);
  await worker.cycle("poll");
  expect(existsSync(join(checkout, "compose.yaml"))).toBe(true);
  expect(docker.composeCalls().filter((c) => c.startsWith("up"))).toHaveLength(1);
});

test("a damaged checkout is cloned again, and only then", async () => {
  const { worker, repo, checkout, deps } = setup();
  await worker.cycle("start");
  const again = new ServiceWorker(service("web", repo.remote), deps);
  writeFileSync(join(checkout, "marker"), "untracked");
  const before = { dir: statSync(checkout).ino, git: statSync(gitDirOf(checkout)).ino };
  await again.cycle("start");
  // A healthy checkout is reused (same directories); what a container left in it is cleaned before up.
  expect({ dir: statSync(checkout).ino, git: statSync(gitDirOf(checkout)).ino }).toEqual(before);
  expect(existsSync(join(checkout, "marker"))).toBe(false);
  rmSync(gitDirOf(checkout), { recursive: true });
  const third = new ServiceWorker(service("web", repo.remote), deps);
  await third.cycle("start");
  expect(existsSync(gitDirOf(checkout))).toBe(true);
  expect(existsSync(join(checkout, ".git"))).toBe(false);
  expect(existsSync(join(checkout, "marker"))).toBe(false);
});

test("a failed up is reported and retried at the next cycle", async () => {
  const { worker, docker } = setup();
  docker.fail("up", 3);
  await worker.cycle("start");
  expect(worker.status()).toMatchObject({ lastResult: "failed" });
  expect(worker.status().lastError).toContain("exited with status 3");
  docker.heal("up");
  await worker.cycle("poll");
  expect(worker.status()).toMatchObject({ lastResult: "deployed", lastError: null });
});

test("a missing compose file is a clear error for that service", async () => {
  const { worker } = setup({}, { "README.md": "no compose here" });
  await worker.cycle("start");
  expect(worker.status().lastError).toContain('Cannot find a compose file');
  expect(worker.status().lastError).toContain('"compose.yaml"');
});

test("a missing user is a clear error for that service only", async () => {
  const a = setup({ user: "ghost" });
  a.deps.users = rootUsers(a.root, ["ghost"]);
  const w = new ServiceWorker(service("web", a.repo.remote, { user: "ghost" }), a.deps);
  await w.cycle("start");
  expect(w.status().lastError).toBe('Cannot find user "ghost": no such account');
  const b = setup();
  await b.worker.cycle("start");
  expect(b.worker.status().lastResult).toBe("deployed");
});

test("compose runs with a minimal explicit environment plus the service env", async () => {
  const { worker, docker } = setup({ env: { GREETING: "hi" }, envKeys: ["GREETING"] });
  await worker.cycle("start");
  const up = docker.calls().find((c) => c.argv.includes(" up "))!;
  expect(up.env.filter((e) => !["PWD", "SHLVL", "_", "OLDPWD"].includes(e)).sort())
    .toEqual(["DOCKER_CONFIG", "GREETING", "HOME", "LC_ALL", "LOGNAME", "PATH", "USER"]);
});

test("the loop polls every interval plus up to half of it in jitter", async () => {
  const { worker, clock, docker, deps } = setup();
  deps.random = () => 0.999;
  worker.start();
  await waitFor(() => clock.waiting === 1, 10_000, "first cycle");
  const next = worker.status().nextPollAt!;
  expect(next - clock.now()).toBe(60_000 + 29_970);
  docker.clear();
  clock.advance(60_000);
  // Not due yet: the loop still sleeps (a due sleeper leaves the clock at once), and nothing ran.
  expect(clock.waiting).toBe(1);
  expect(worker.status().nextPollAt).toBe(next);
  expect(docker.calls()).toEqual([]);
  clock.advance(29_970);
  await waitFor(() => worker.status().lastPollAt === clock.now(), 10_000, "second cycle");
  await worker.stop();
});

test("triggers during a cycle coalesce into one follow-up cycle", async () => {
  const { worker, clock } = setup();
  let cycles = 0;
  const orig = worker.cycle.bind(worker);
  worker.cycle = async (t) => {
    cycles++;
    await orig(t);
  };
  worker.start();
  worker.trigger("pgoctl");
  worker.trigger("pgoctl");
  worker.trigger("webhook");
  // Back in the loop's sleep with nothing pending (a pending trigger skips the sleep): no third cycle can start.
  await waitFor(() => cycles === 2 && clock.waiting === 1 && worker.status().nextPollAt !== null, 10_000, "two cycles");
  expect(cycles).toBe(2);
  expect(worker.status().nextPollAt).toBe(clock.now() + 60_000);
  await worker.stop();
});

test("registries are logged in with the token on stdin before pull and up, and logged out after", async () => {
  const { worker, docker } = setup(
    { registries: [{ user: "bob", token: "s3cret-token", host: "127.0.0.1:5000" }, { user: "root", token: "t2", host: "reg.example" }] },
    { "compose.yaml": "services:\n  web:\n    image: 127.0.0.1:5000/web:1\n" },
  );
  await worker.cycle("start");
  const argv = docker.calls().map((c) => c.argv);
  expect(argv.join("\n")).not.toContain("s3cret-token");
  expect(argv.filter((a) => !a.startsWith("compose"))).toEqual([
    "login --username bob --password-stdin 127.0.0.1:5000",
    "login --username root --password-stdin reg.example",
    "logout 127.0.0.1:5000",
    "logout reg.example",
  ]);
  const loginAt = argv.indexOf("login --username root --password-stdin reg.example");
  const logoutAt = argv.indexOf("logout 127.0.0.1:5000");
  expect(argv.findIndex((a) => a.includes(" pull "))).toBeGreaterThan(loginAt);
  expect(argv.findIndex((a) => a.includes(" up "))).toBeLessThan(logoutAt);
  expect(readFileSync(join(docker.bin, "login.stdin"), "utf8")).toBe("s3cret-token\nt2\n");
});

test("a failed registry login stops the deploy with a clear error and never shows the token", async () => {
  const { worker, docker } = setup({ registries: [{ user: "bob", token: "s3cret-token", host: "127.0.0.1:5000" }] });
  docker.fail("login");
  await worker.cycle("start");
  expect(worker.status().lastResult).toBe("failed");
  expect(worker.status().lastError).toContain('Cannot log in to registry "127.0.0.1:5000" as "bob"');
  expect(worker.status().lastError).not.toContain("s3cret");
  expect(docker.composeCalls().some((c) => c.startsWith("up"))).toBe(false);
});

test("the importing service writes the Caddy import file and runs its reload after a change only", async () => {
  const { worker, docker, deps, checkout } = setup({ import: "caddy/import", reload: { container: "caddy", argv: ["caddy", "reload"] } });
  deps.importText = "a.example.org {\n\treverse_proxy a:80\n}\n";
  await worker.cycle("start");
  expect(readFileSync(join(checkout, "caddy/import"), "utf8")).toBe(deps.importText);
  expect(docker.composeCalls().filter((c) => c.startsWith("exec"))).toEqual(["exec -T caddy caddy reload"]);
  docker.clear();
  await worker.cycle("poll");
  expect(docker.composeCalls()).toEqual([]);
});

test("a failed proxy reload is retried at the next cycle", async () => {
  const { worker, docker, deps } = setup({ import: "import", reload: { container: "caddy", argv: ["caddy", "reload"] } });
  deps.importText = "x {\n}\n";
  docker.fail("exec");
  await worker.cycle("start");
  expect(worker.status().lastResult).toBe("deployed");
  docker.heal("exec");
  docker.clear();
  await worker.cycle("poll");
  expect(docker.composeCalls()).toEqual(["exec -T caddy caddy reload"]);
});

test("a failed mount keeps the service from starting", async () => {
  const { worker, docker, deps } = setup({ mount: { host: "nfs.example.org", path: "/share" } });
  deps.mountinfo = join(docker.bin, "mountinfo");
  writeFileSync(deps.mountinfo, "");
  writeFileSync(join(docker.bin, "fail.mount"), "");
  await worker.cycle("start");
  expect(worker.status().lastError).toContain("Cannot mount the data share");
  expect(docker.composeCalls().some((c) => c.startsWith("up"))).toBe(false);
  rmSync(join(docker.bin, "fail.mount"));
  await worker.cycle("poll");
  expect(worker.status().lastResult).toBe("deployed");
  expect(readFileSync(join(docker.bin, "mount.log"), "utf8")).toContain(`nfs.example.org:/share ${join(deps.datadir, "web")}`);
});

test("the data directory is made for the service with mode 0750", async () => {
  const { worker, deps } = setup();
  await worker.cycle("start");
  expect(statSync(join(deps.datadir, "web")).mode & 0o777).toBe(0o750);
});

test("a commit the policy refuses is not checked out or deployed, and what runs keeps running", async () => {
  const { worker, docker, repo, checkout } = setup({ user: "app" });
  await worker.cycle("start");
  const good = checkoutGit(checkout, "rev-parse", "HEAD");
  writeFileSync(join(docker.bin, "model.json"), JSON.stringify({ name: "web", services: { web: { image: "x", privileged: true } } }));
  const bad = repo.commit({ "compose.yaml": readFileSync(join(repo.work, "compose.yaml"), "utf8") + "    privileged: true\n" });
  docker.clear();
  await worker.cycle("poll");
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(good);
  expect(docker.composeCalls().filter((c) => !c.startsWith("--profile * config") && !c.startsWith("config"))).toEqual([]);
  expect(worker.status().lastResult).toBe("refused");
  expect(worker.status().lastError).toContain(`Refused commit ${bad.slice(0, 12)}`);
  expect(worker.status().lastError).toContain('"privileged" is refused');
  docker.clear();
  await worker.cycle("poll");
  expect(docker.composeCalls()).toEqual([]); // the same refused commit is not evaluated again
  rmSync(join(docker.bin, "model.json"));
  const fixed = repo.commit({ "compose.yaml": readFileSync(join(repo.work, "compose.yaml"), "utf8").replace("    privileged: true\n", "    environment: [A=1]\n") });
  await worker.cycle("poll");
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(fixed);
  expect(worker.status()).toMatchObject({ lastResult: "deployed", lastError: null });
});

test("a volume that belongs to another project is refused; an engine that cannot list volumes fails the cycle without refusing", async () => {
  const { worker, docker, deps } = setup({ user: "app" });
  writeFileSync(join(docker.bin, "model.json"), JSON.stringify({ name: "web", services: { web: { image: "x", volumes: ["data:/d"] } }, volumes: { data: { name: "web_data" } } }));
  let owner: string | null = null;
  deps.engineNames = async () => {
    if (owner === null) throw new Error("Cannot list the engine's volumes: the Docker engine answered 500");
    return { volumes: new Map([["web_data", owner]]), networks: new Map() };
  };
  deps.projects = ["web", "other"];
  await worker.cycle("start");
  expect(worker.status().lastResult).not.toBe("refused");
  expect(worker.status().lastError).toContain("Cannot list the engine's volumes");
  expect(docker.composeCalls().some((c) => c.startsWith("up"))).toBe(false);
  owner = "victim";
  await worker.cycle("poll");
  expect(worker.status().lastResult).toBe("refused");
  expect(worker.status().lastError).toContain("(rule volume_in_use)");
  expect(docker.composeCalls().some((c) => c.startsWith("up"))).toBe(false);
});

test("a root service bypasses the compose policy", async () => {
  const { worker, docker } = setup({ user: "root" });
  writeFileSync(join(docker.bin, "model.json"), JSON.stringify({ name: "web", services: { web: { image: "x", privileged: true } } }));
  await worker.cycle("start");
  expect(worker.status().lastResult).toBe("deployed");
});

test("the deploy history records each attempt durably", async () => {
  const { worker, docker, repo } = setup();
  await worker.cycle("start");
  docker.fail("up");
  repo.commit({ "compose.yaml": "services:\n  web:\n    image: y\n" });
  await worker.cycle("poll");
  const { readHistory } = await import("../src/history.ts");
  const h = await readHistory(worker.historyFile);
  expect(h.map((e) => `${e.trigger} ${e.result}`)).toEqual(["start deployed", "poll rolled back", "rollback failed"]);
  expect(h[1]!.detail).toContain("exited with status 1");
});

test("a commit whose containers exit at once is rolled back to the last good commit and not retried", async () => {
  const { worker, docker, repo, checkout } = setup();
  await worker.cycle("start");
  const good = checkoutGit(checkout, "rev-parse", "HEAD");
  const bad = repo.commit({ "compose.yaml": readFileSync(join(repo.work, "compose.yaml"), "utf8") + "# fake: exits\n" });
  await worker.cycle("poll");
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(good);
  expect(docker.containers()).toBeDefined();
  expect(worker.status()).toMatchObject({ lastResult: "rolled back", good, bad, commit: good });
  expect(worker.status().lastError).toContain(`Commit ${bad.slice(0, 12)} failed (container of "web" exited); rolled back to ${good.slice(0, 12)}`);
  const { readHistory } = await import("../src/history.ts");
  expect((await readHistory(worker.historyFile)).map((e) => `${e.commit.slice(0, 7)} ${e.trigger} ${e.result}`)).toEqual([
    `${good.slice(0, 7)} start deployed`, `${bad.slice(0, 7)} poll rolled back`, `${good.slice(0, 7)} rollback deployed`,
  ]);
  docker.clear();
  await worker.cycle("poll");
  expect(docker.composeCalls()).toEqual([]); // the bad commit is not tried again
  // check says so: it would not deploy, though the policy allows it.
  expect(await worker.check()).toMatchObject({ commit: bad, running: good, refusal: expect.stringContaining(`Commit ${bad.slice(0, 12)} was rolled back`) });
  const next = repo.commit({ "compose.yaml": readFileSync(join(repo.work, "compose.yaml"), "utf8").replace("# fake: exits\n", "# fixed\n") });
  await worker.cycle("poll");
  expect(worker.status()).toMatchObject({ lastResult: "deployed", commit: next, good: next, bad: null });
});

test("the good commit brought back after its containers went, or an older one by rollback, keeps the bad commit marked", async () => {
  const { worker, docker, repo, checkout } = setup();
  await worker.cycle("start");
  const first = checkoutGit(checkout, "rev-parse", "HEAD");
  const good = repo.commit({ "compose.yaml": readFileSync(join(repo.work, "compose.yaml"), "utf8") + "    environment: [A=1]\n" });
  await worker.cycle("poll");
  const bad = repo.commit({ "compose.yaml": readFileSync(join(repo.work, "compose.yaml"), "utf8") + "# fake: exits\n" });
  await worker.cycle("poll");
  expect(worker.status()).toMatchObject({ commit: good, good, bad });

  // Self-healing brings the good commit up again: the bad one stays marked and is not tried.
  docker.clear();
  rmSync(join(docker.bin, "state", "web")); // its container is gone
  await worker.cycle("poll");
  expect(docker.composeCalls().filter((c) => c.startsWith("up"))).toHaveLength(1);
  expect(worker.status()).toMatchObject({ commit: good, good, bad, lastResult: "deployed" });

  // `pgoctl rollback` to the first commit, then unpin: the bad commit is still not tried.
  expect(await worker.rollbackTo(first)).toBe(0);
  expect(worker.status()).toMatchObject({ commit: first, pinned: first, bad });
  await worker.unpin();
  docker.clear();
  await worker.cycle("poll");
  expect(docker.composeCalls()).toEqual([]);
  expect(worker.status()).toMatchObject({ commit: first, bad });
});

test("the last good commit, the bad one and a pin survive a restart; a config change releases the pin", async () => {
  const { worker, repo, checkout, deps } = setup();
  await worker.cycle("start");
  const good = checkoutGit(checkout, "rev-parse", "HEAD");
  repo.commit({ "compose.yaml": readFileSync(join(repo.work, "compose.yaml"), "utf8") + "# fake: exits\n" });
  await worker.cycle("poll");
  await worker.pin(good);
  const again = new ServiceWorker(service("web", repo.remote), deps);
  expect(again.status()).toMatchObject({ good, pinned: good });
  expect(again.status().bad).not.toBeNull();
  const changed = new ServiceWorker(service("web", repo.remote, { branch: "main", env: { A: "1" }, envKeys: ["A"] }), deps);
  expect(changed.status().pinned).toBeNull();
});

test("the loop backs off to twice and then four times the interval while the remote fails, and not after", async () => {
  const { worker, clock, repo } = setup();
  worker.start();
  await waitFor(() => clock.waiting === 1 && worker.status().nextPollAt !== null, 10_000, "first cycle");
  expect(worker.status().nextPollAt! - clock.now()).toBe(60_000);
  renameSync(repo.remote, repo.remote + ".gone");
  const gaps: number[] = [];
  for (let i = 0; i < 3; i++) {
    const before = worker.status().lastPollAt;
    clock.advance(worker.status().nextPollAt! - clock.now());
    await waitFor(() => worker.status().lastPollAt !== before && clock.waiting === 1 && worker.status().nextPollAt !== null, 10_000, "a cycle");
    gaps.push(worker.status().nextPollAt! - clock.now());
  }
  expect(gaps).toEqual([120_000, 240_000, 240_000]);
  renameSync(repo.remote + ".gone", repo.remote);
  const before = worker.status().lastPollAt;
  clock.advance(worker.status().nextPollAt! - clock.now());
  await waitFor(() => worker.status().lastPollAt !== before && clock.waiting === 1 && worker.status().nextPollAt !== null, 10_000, "recovery");
  expect(worker.status().nextPollAt! - clock.now()).toBe(60_000);
  await worker.stop();
});

test("a checkout whose git directory is removed while running is cloned again at the next cycle", async () => {
  const { worker, checkout } = setup();
  await worker.cycle("start");
  const running = worker.status().commit;
  rmSync(gitDirOf(checkout), { recursive: true });
  await worker.cycle("poll");
  expect(worker.status().lastError).not.toBeNull();
  // Until the clone, status still names the commit that runs.
  expect(worker.status().commit).toBe(running);
  await worker.cycle("poll");
  expect(existsSync(gitDirOf(checkout))).toBe(true);
  expect(worker.status()).toMatchObject({ lastError: null, lastResult: "deployed" });
});

test("a deploy that fails while the engine does not answer is not rolled back and is tried again at the next cycle", async () => {
  const { worker, docker, repo, checkout, deps } = setup();
  await worker.cycle("start");
  const good = checkoutGit(checkout, "rev-parse", "HEAD");
  const engine = docker.containers();
  let away = false;
  deps.containers = {
    ofProject: (p) => (away ? Promise.reject(new Error("connect ENOENT /var/run/docker.sock")) : engine.ofProject(p)),
    all: () => (away ? Promise.reject(new Error("connect ENOENT /var/run/docker.sock")) : engine.all()),
  };
  const next = repo.commit({ "compose.yaml": readFileSync(join(repo.work, "compose.yaml"), "utf8") + "# v2\n" });
  away = true;
  docker.fail("up");
  await worker.cycle("poll");
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(next);
  expect(worker.status()).toMatchObject({ lastResult: "failed", commit: next, good, bad: null });
  expect(worker.status().lastError).toContain("the Docker engine is not answering");

  // The engine is back with the old containers running: the new commit is deployed all the same.
  away = false;
  docker.heal("up");
  docker.clear();
  await worker.cycle("poll");
  expect(docker.composeCalls().some((c) => c.startsWith("up "))).toBe(true);
  expect(worker.status()).toMatchObject({ lastResult: "deployed", commit: next, good: next, lastError: null });
  docker.clear();
  await worker.cycle("poll");
  expect(docker.composeCalls()).toEqual([]);
});

test("a commit whose rollback fails as well is not held against it and is tried again at the next cycle", async () => {
  const { worker, docker, repo, checkout } = setup();
  await worker.cycle("start");
  const good = checkoutGit(checkout, "rev-parse", "HEAD");
  const next = repo.commit({ "compose.yaml": readFileSync(join(repo.work, "compose.yaml"), "utf8") + "# v2\n" });
  docker.fail("up");
  await worker.cycle("poll");
  expect(worker.status()).toMatchObject({ commit: good, good, bad: null });
  expect(worker.status().lastError).toContain(`Commit ${next.slice(0, 12)} failed (docker compose up exited with status 1), and so did rolling back to ${good.slice(0, 12)}`);
  docker.heal("up");
  await worker.cycle("poll");
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(next);
  expect(worker.status()).toMatchObject({ lastResult: "deployed", commit: next, good: next, bad: null, lastError: null });
});

test("a container removed while a deploy settles ends the wait at once and the deploy is tried again", async () => {
  const { worker, docker, deps, clock, log } = setup();
  const engine = docker.containers();
  let removed = false;
  deps.containers = {
    // The first look after the first up finds the container gone, as after `docker rm -f`.
    ofProject: async (p) => {
      if (!removed && docker.running().includes(p)) {
        removed = true;
        rmSync(join(docker.bin, "state", p));
      }
      return engine.ofProject(p);
    },
    all: () => engine.all(),
  };
  const before = clock.now();
  await Promise.race([worker.cycle("start"), Bun.sleep(30_000).then(() => { throw new Error("the deploy waited for the health timeout"); })]);
  expect(clock.now()).toBe(before); // no health_timeout waited out
  expect(docker.composeCalls().filter((c) => c.startsWith("up "))).toHaveLength(2);
  expect(docker.running()).toEqual(["web"]);
  expect(worker.status()).toMatchObject({ lastResult: "deployed", lastError: null });
  const { readHistory } = await import("../src/history.ts");
  const h = await readHistory(worker.historyFile);
  expect(h.map((e) => `${e.trigger} ${e.result}`)).toEqual(["start failed", "start deployed"]);
  expect(h[0]!.detail).toContain('the container of "web" was removed during the deploy: trying again');
  expect(log.lines.filter((l) => l.includes('msg=deploying'))).toHaveLength(2);
  expect(log.lines.filter((l) => l.includes('msg="deploy failed"'))).toHaveLength(1);
  expect(log.lines.filter((l) => l.includes("msg=deployed"))).toHaveLength(1);
});

test("stopping the loop ends a wait for health within a second and records the attempt as interrupted", async () => {
  const { worker, docker, deps } = setup();
  const engine = docker.containers();
  let polls = 0;
  deps.containers = {
    ofProject: async (p) => {
      polls++;
      return (await engine.ofProject(p)).map((c) => ({ ...c, health: "starting" }));
    },
    all: () => engine.all(),
  };
  worker.start();
  await waitFor(() => polls >= 1, 20_000, "the wait for health");
  const t0 = Date.now();
  await Promise.race([worker.stop(), Bun.sleep(10_000)]);
  expect(Date.now() - t0).toBeLessThan(1000);
  const { readHistory } = await import("../src/history.ts");
  expect((await readHistory(worker.historyFile)).map((e) => `${e.trigger} ${e.result}`)).toEqual(["start interrupted"]);
  expect(worker.status().bad).toBeNull();
});

test("a deploy retried after a failure logs each attempt, its result and deployed, and keeps both in the history", async () => {
  const { worker, docker, log } = setup();
  docker.fail("up");
  await worker.cycle("start");
  expect(worker.status().lastResult).toBe("failed");
  docker.heal("up");
  await worker.cycle("poll");
  expect(worker.status()).toMatchObject({ lastResult: "deployed", lastError: null });
  const events = log.lines.map((l) => /msg=("[^"]*"|\S+)/.exec(l)?.[1]).filter((m) => m === "deploying" || m === '"deploy failed"' || m === "deployed");
  expect(events).toEqual(["deploying", '"deploy failed"', "deploying", "deployed"]);
  const { readHistory } = await import("../src/history.ts");
  expect((await readHistory(worker.historyFile)).map((e) => `${e.trigger} ${e.result}`)).toEqual(["start failed", "poll deployed"]);
});

test("an attempt that pgod never finished is closed as interrupted at the next start", async () => {
  const { worker, deps, repo, log } = setup();
  await worker.cycle("start");
  const { appendHistory, readHistory } = await import("../src/history.ts");
  await appendHistory(worker.historyFile, { commit: "c".repeat(40), time: 5, trigger: "poll", result: "started", durationMs: 0, id: "cut" });
  expect((await readHistory(worker.historyFile)).at(-1)!.result).toBe("started");
  const again = new ServiceWorker(service("web", repo.remote), deps);
  await again.cycle("start");
  const h = await readHistory(again.historyFile);
  expect(h.map((e) => `${e.commit.slice(0, 1)} ${e.result}`).slice(0, 2)).toEqual([`${h[0]!.commit.slice(0, 1)} deployed`, "c interrupted"]);
  expect(log.lines.some((l) => l.includes("cut short"))).toBe(true);
});

test("a stop file present at start keeps the service from ever starting, and deployNow refuses while it exists", async () => {
  const { worker, docker, deps } = setup();
  writeFileSync(join(deps.dir, "web.stop"), "");
  await worker.cycle("start");
  await worker.cycle("webhook");
  expect(docker.composeCalls().filter((c) => c.startsWith("up ") || c.startsWith("pull "))).toEqual([]);
  expect(worker.status()).toMatchObject({ stopFile: true, lastResult: "stopped" });
  let said = "";
  const code = await worker.deployNow("pgoctl", { io: { onStderr: (c) => void (said += new TextDecoder().decode(c)) } });
  expect(code).not.toBe(0);
  expect(said).toContain(`the stop file "${join(deps.dir, "web.stop")}" exists`);
  expect(await worker.stopFileNow()).toBe(join(deps.dir, "web.stop"));
  expect(docker.composeCalls().filter((c) => c.startsWith("up "))).toEqual([]);
  expect(docker.running()).toEqual([]);
});

test("what a container wrote into the checkout (untracked, ignored, a .env, a symlink, a .git, an edit) is gone before every up", async () => {
  const { worker, repo, checkout, deps, docker } = setup({}, { "compose.yaml": COMPOSE_WEB, ".gitignore": ".env\nlink\ncache/\n" });
  await worker.cycle("start");
  const seen: string[][] = [];
  const real = deps.runner;
  deps.runner = (argv, o) => {
    if (argv.includes("up")) seen.push(readdirSync(checkout).sort());
    return real(argv, o);
  };
  const plant = () => {
    writeFileSync(join(checkout, ".env"), "PRIV=true\n");
    rmSync(join(checkout, "link"), { force: true });
    symlinkSync("/", join(checkout, "link"));
    mkdirSync(join(checkout, "cache"), { recursive: true });
    writeFileSync(join(checkout, "cache", "x"), "x");
    writeFileSync(join(checkout, "stray"), "x");
    mkdirSync(join(checkout, ".git", "hooks"), { recursive: true });
    writeFileSync(join(checkout, "compose.yaml"), "services: {tampered: {image: x}}\n");
  };
  const clean = [".gitignore", "compose.yaml"];
  // A new commit.
  plant();
  repo.commit({ "compose.yaml": `${COMPOSE_WEB}    environment: [A=1]\n` });
  await worker.cycle("poll");
  // pgoctl up, and self-healing after the containers went.
  plant();
  expect(await worker.exclusive(() => worker.deployNow("pgoctl"))).toBe(0);
  plant();
  rmSync(join(docker.bin, "state"), { recursive: true, force: true });
  await worker.cycle("poll");
  expect(seen).toEqual([clean, clean, clean]);
  expect(readFileSync(join(checkout, "compose.yaml"), "utf8")).toContain("A=1");
  expect(checkoutGit(checkout, "status", "--porcelain", "--ignored")).toBe("");
});

test("a checkout made by an older pgod has its .git moved out at start, without a clone, and nothing a container put in it runs", async () => {
  const { worker, repo, checkout, log, root } = setup();
  git(root, "clone", "--quiet", repo.remote, checkout);
  const head = git(checkout, "rev-parse", "HEAD");
  const marker = join(root, "MARKER");
  writeFileSync(join(checkout, ".git", "hooks", "post-checkout"), `#!/bin/sh\ntouch ${marker}\n`);
  chmodSync(join(checkout, ".git", "hooks", "post-checkout"), 0o755);
  git(checkout, "config", "core.fsmonitor", `touch ${marker}; false`);
  git(checkout, "config", "filter.evil.smudge", `touch ${marker}; cat`);
  await worker.cycle("start");
  expect(log.lines.join("\n")).toContain("moved the git directory out of the checkout");
  expect(log.lines.join("\n")).not.toContain("msg=cloned");
  expect(existsSync(join(checkout, ".git"))).toBe(false);
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(head);
  const config = readFileSync(join(gitDirOf(checkout), "config"), "utf8");
  expect(config).not.toContain("fsmonitor");
  expect(config).not.toContain("evil");
  expect(existsSync(join(gitDirOf(checkout), "hooks"))).toBe(false);
  const next = repo.commit({ "compose.yaml": `${COMPOSE_WEB}    environment: [B=1]\n`, ".gitattributes": "* filter=evil\n" });
  await worker.cycle("poll");
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(next);
  expect(existsSync(marker)).toBe(false);
  expect(worker.status()).toMatchObject({ lastResult: "deployed", lastError: null });
});

test("check judges the newest commit of the branch without moving the checkout, and status names a refused one", async () => {
  const compose = "services:\n  web:\n    image: x\n";
  const { worker, docker, repo, checkout } = setup({ user: "app" }, { "compose.yaml": compose });
  await worker.cycle("start");
  const good = checkoutGit(checkout, "rev-parse", "HEAD");
  expect(await worker.check()).toEqual({ commit: good, branch: "main", running: good, refusal: null, findings: [] });

  // Pushed, and not yet seen by the loop: check answers for it all the same.
  writeFileSync(join(docker.bin, "model.json"), JSON.stringify({ name: "web", services: { web: { image: "x", privileged: true } } }));
  const bad = repo.commit({ "compose.yaml": `${compose}    privileged: true\n` });
  docker.clear();
  const refused = await worker.check();
  expect(refused).toMatchObject({ commit: bad, running: good, refusal: expect.stringContaining('"privileged" is refused') });
  expect(refused.findings).toEqual([expect.objectContaining({ file: "compose.yaml", line: 4, service: "web", key: "services.web.privileged", rule: "privileged" })]);
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(good);
  expect(docker.composeCalls().filter((c) => / (up|pull|down) ?/.test(` ${c}`))).toEqual([]);
  expect(worker.status().refused).toEqual({ commit: bad, reason: refused.refusal! });
  expect(existsSync(join(worker.dir, "..", ".stage-web"))).toBe(false);

  // The loop refuses it too and keeps what runs; status keeps naming it.
  await worker.cycle("poll");
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(good);
  expect(worker.status()).toMatchObject({ lastResult: "refused", refused: { commit: bad } });

  // A fixing commit: check says it would deploy before the loop deploys it; then status clears.
  rmSync(join(docker.bin, "model.json"));
  const fixed = repo.commit({ "compose.yaml": `${compose}    environment: [A=1]\n` });
  expect(await worker.check()).toMatchObject({ commit: fixed, running: good, refusal: null });
  expect(checkoutGit(checkout, "rev-parse", "HEAD")).toBe(good);
  await worker.cycle("poll");
  expect(worker.status()).toMatchObject({ commit: fixed, lastResult: "deployed", refused: null });
});

test("check judges the last fetched commit when the remote cannot be reached, and says so", async () => {
  const { worker, repo, checkout, docker } = setup({ user: "app" });
  await worker.cycle("start");
  const head = checkoutGit(checkout, "rev-parse", "HEAD");
  writeFileSync(join(docker.bin, "model.json"), JSON.stringify({ name: "web", services: { web: { image: "x", privileged: true } } }));
  const bad = repo.commit({ "compose.yaml": `${readFileSync(join(repo.work, "compose.yaml"), "utf8")}    privileged: true\n` });
  await worker.cycle("poll"); // fetched and refused: the checkout stays
  renameSync(repo.remote, `${repo.remote}.gone`);
  const v = await worker.check();
  renameSync(`${repo.remote}.gone`, repo.remote);
  expect(v).toMatchObject({ commit: bad, running: head, refusal: expect.stringContaining("privileged"), stale: expect.stringContaining("fetch") });
});
