import { afterEach, expect, test } from "bun:test";
import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseConfig } from "../src/config.ts";
import { cleanupStale, watchConfig } from "../src/daemon.ts";
import type { ContainerInfo } from "../src/containers.ts";
import { memoryLogger } from "../src/log.ts";
import { ManualClock } from "../src/scheduler.ts";
import { FakeDocker, tempDir, waitFor } from "./helpers.ts";

const cleanups: (() => void)[] = [];
afterEach(() => cleanups.splice(0).forEach((f) => f()));
const VALID = '[[services]]\nname = "a"\nuser = "root"\nrepository = "/x"\n';

function root(): string {
  const r = tempDir();
  cleanups.push(() => rmSync(r, { recursive: true, force: true }));
  return r;
}

/**
 * watchConfig() on `file` driven by a manual clock. `poll()` moves time one interval on and
 * waits until that poll is done (the watcher sleeps again, or has resolved).
 */
function watch(file: string) {
  const log = memoryLogger();
  const ac = new AbortController();
  const clock = new ManualClock(0);
  const w = { log, ac, result: null as boolean | null, done: Promise.resolve(), poll: async (): Promise<void> => {} };
  w.done = watchConfig(file, VALID, { clock, logger: log, intervalMs: 10, signal: ac.signal }).then((r) => void (w.result = r));
  const settled = (): boolean => clock.waiting === 1 || w.result !== null;
  w.poll = async () => {
    await waitFor(settled, 5000, "the watcher to sleep");
    clock.advance(10);
    await waitFor(settled, 5000, "the watcher's poll");
  };
  return w;
}

test("watchConfig() ignores an invalid change, reports it with its line, and resolves on a valid one", async () => {
  const file = join(root(), "pgo.toml");
  writeFileSync(file, VALID);
  const w = watch(file);
  writeFileSync(file, VALID + "bogus = 1\n");
  await w.poll();
  expect(w.log.lines.join("\n")).toContain(`${file}:5: services[1].bogus: Unknown key`);
  expect(w.result).toBeNull();
  writeFileSync(file, VALID.replace('"a"', '"b"'));
  await w.poll();
  await w.done;
  expect(w.result).toBe(true);
  w.ac.abort();
});

test("watchConfig() does not count a touch that keeps the bytes, nor a deleted file", async () => {
  const file = join(root(), "pgo.toml");
  writeFileSync(file, VALID);
  const w = watch(file);
  writeFileSync(file, VALID);
  await w.poll();
  rmSync(file);
  await w.poll();
  expect(w.log.lines.join("\n")).toContain("unreadable");
  writeFileSync(file, VALID);
  await w.poll();
  expect(w.result).toBeNull();
  w.ac.abort();
});

test("cleanupStale() downs projects pgod ran from its dir that are gone from the config, and nothing else", async () => {
  const r = root();
  const dir = join(r, "dir");
  mkdirSync(join(dir, "old", ".git"), { recursive: true });
  mkdirSync(join(dir, "gone"), { recursive: true });
  mkdirSync(join(dir, ".gitdirs", "gone"), { recursive: true });
  mkdirSync(join(dir, ".gitdirs", "a"), { recursive: true });
  mkdirSync(join(dir, "a", ".git"), { recursive: true });
  mkdirSync(join(dir, "notes"), { recursive: true });
  writeFileSync(join(dir, "a.stop"), "");
  mkdirSync(join(dir, ".clone-x-1"), { recursive: true });
  const docker = new FakeDocker(r);
  const containers: ContainerInfo[] = [
    { id: "1", project: "old", service: "web", state: "running", health: "", workingDir: join(dir, "old") },
    { id: "2", project: "a", service: "web", state: "running", health: "", workingDir: join(dir, "a") },
    { id: "3", project: "elsewhere", service: "web", state: "running", health: "", workingDir: "/srv/elsewhere" },
  ];
  await cleanupStale(parseConfig(VALID, "pgo.toml"), dir, {
    runner: docker.runner(),
    containers: { all: async () => containers, ofProject: async () => [] },
    logger: memoryLogger(),
  });
  expect(docker.calls().map((c) => c.argv)).toEqual(["compose --project-name old down --remove-orphans"]);
  expect(existsSync(join(dir, "old"))).toBe(false);
  // A checkout with its git directory outside (`<dir>/.gitdirs/<name>`) goes with it.
  expect(existsSync(join(dir, "gone"))).toBe(false);
  expect(existsSync(join(dir, ".gitdirs", "gone"))).toBe(false);
  expect(existsSync(join(dir, ".gitdirs", "a"))).toBe(true);
  expect(existsSync(join(dir, "a"))).toBe(true);
  expect(existsSync(join(dir, "a.stop"))).toBe(true);
  expect(existsSync(join(dir, "notes"))).toBe(true);
  expect(existsSync(join(dir, ".clone-x-1"))).toBe(false);
});

/** A real pgod process (bun on src/cmd/pgod.ts) on loopback ports, with its stderr collected. */
function spawnPgod(args: string[]) {
  let log = "";
  const proc = Bun.spawn([process.execPath, join(import.meta.dir, "..", "src", "cmd", "pgod.ts"), ...args], {
    stdout: "pipe", stderr: "pipe", env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: "/root" },
  });
  void (async () => {
    for await (const c of proc.stderr) log += new TextDecoder().decode(c);
  })();
  return { proc, log: () => log };
}

test("SIGHUP with an invalid config logs every problem and keeps pgod running; with a valid one pgod exits 2", async () => {
  const r = root();
  const file = join(r, "pgo.toml");
  writeFileSync(file, "# no services\n");
  const pg = spawnPgod(["-c", file, "-d", join(r, "dir"), "--datadir", join(r, "data"), "-s", "127.0.0.1:0", "-m", "127.0.0.1:0", "--restart=false"]);
  try {
    await waitFor(() => pg.log().includes("msg=starting"), 60_000, "pgod to start");
    await waitFor(() => pg.log().includes("SSH server listening"), 60_000, "pgod to listen");
    writeFileSync(file, '[[services]]\nname = "a"\nbogus = 1\n');
    pg.proc.kill("SIGHUP");
    await waitFor(() => pg.log().includes("reload refused"), 60_000, "the reload to be refused");
    expect(pg.log()).toContain(`${file}:3: services[1].bogus: Unknown key`);
    expect(pg.log()).toMatch(/services\[1\]\.(user|repository)/);
    expect(pg.proc.exitCode).toBeNull();
    writeFileSync(file, VALID);
    pg.proc.kill("SIGHUP");
    expect(await Promise.race([pg.proc.exited, Bun.sleep(30_000).then(() => "still running")])).toBe(2);
  } finally {
    pg.proc.kill("SIGKILL");
  }
}, 120_000);

test("pgod exits 1 at start for a missing config and for -d /, and makes nothing", async () => {
  const r = root();
  const missing = spawnPgod(["-c", join(r, "nope.toml"), "-d", join(r, "dir"), "--datadir", join(r, "data"), "-s", "127.0.0.1:0", "-m", "127.0.0.1:0"]);
  expect(await missing.proc.exited).toBe(1);
  expect(missing.log()).toMatch(/Cannot read config .*nope\.toml.*ENOENT/);
  expect(existsSync(join(r, "dir"))).toBe(false);
  const file = join(r, "pgo.toml");
  writeFileSync(file, VALID);
  const slash = spawnPgod(["-c", file, "-d", "/", "--datadir", join(r, "data"), "-s", "127.0.0.1:0", "-m", "127.0.0.1:0"]);
  expect(await slash.proc.exited).toBe(1);
  expect(slash.log()).toMatch(/Invalid value .*\/.* for .*--dir.*: must not be/);
  expect(existsSync(join(r, "data"))).toBe(false);
}, 120_000);

test("cleanupStale() removes a gone service's state, DOCKER_CONFIG and home folders, never its data or what is configured", async () => {
  const r = root();
  const dir = join(r, "dir");
  const data = join(r, "data");
  for (const p of [
    "old/.git", ".state/old", ".docker/old", ".home/olduser", ".state/a", ".docker/a", ".home/root", ".state/shared", ".stage-old",
  ]) mkdirSync(join(dir, p), { recursive: true });
  writeFileSync(join(dir, ".state", "old", "history"), "{}\n");
  writeFileSync(join(dir, ".docker", "old", "config.json"), "{}");
  // A removed service whose share is still mounted keeps its state (and the record of its share).
  writeFileSync(join(dir, ".state", "shared", "mount"), join(data, "shared"));
  mkdirSync(join(data, "old"), { recursive: true });
  writeFileSync(join(data, "old", "db"), "keep");
  const docker = new FakeDocker(r);
  await cleanupStale(parseConfig(VALID, "pgo.toml"), dir, {
    runner: docker.runner(), containers: { all: async () => [], ofProject: async () => [] }, logger: memoryLogger(),
  });
  for (const gone of ["old", ".state/old", ".docker/old", ".home/olduser", ".stage-old"]) expect([gone, existsSync(join(dir, gone))]).toEqual([gone, false]);
  for (const kept of [".state/a", ".docker/a", ".home/root", ".state/shared/mount"]) expect([kept, existsSync(join(dir, kept))]).toEqual([kept, true]);
  expect(existsSync(join(data, "old", "db"))).toBe(true);
});
