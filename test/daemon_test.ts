import { afterEach, expect, test } from "bun:test";
import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseConfig } from "../src/config.ts";
import { cleanupStale, watchConfig } from "../src/daemon.ts";
import type { ContainerInfo } from "../src/containers.ts";
import { memoryLogger } from "../src/log.ts";
import { realClock } from "../src/scheduler.ts";
import { FakeDocker, tempDir } from "./helpers.ts";

const cleanups: (() => void)[] = [];
afterEach(() => cleanups.splice(0).forEach((f) => f()));
const VALID = '[[services]]\nname = "a"\nuser = "root"\nrepository = "/x"\n';

function root(): string {
  const r = tempDir();
  cleanups.push(() => rmSync(r, { recursive: true, force: true }));
  return r;
}

test("watchConfig() ignores an invalid change, reports it with its line, and resolves on a valid one", async () => {
  const dir = root();
  const file = join(dir, "pgo.toml");
  writeFileSync(file, VALID);
  const log = memoryLogger();
  const ac = new AbortController();
  let result = null as boolean | null;
  const p = watchConfig(file, VALID, { clock: realClock, logger: log, intervalMs: 20, signal: ac.signal }).then((r) => (result = r));
  writeFileSync(file, VALID + "bogus = 1\n");
  const deadline = Date.now() + 5000;
  while (!log.lines.some((l) => l.includes("pgo.toml:5")) && Date.now() < deadline) await Bun.sleep(10);
  expect(log.lines.join("\n")).toContain(`${file}:5: services[1].bogus: Unknown key`);
  expect(result).toBeNull();
  writeFileSync(file, VALID.replace('"a"', '"b"'));
  await p;
  expect(result).toBe(true);
  ac.abort();
});

test("watchConfig() does not count a touch that keeps the bytes, nor a deleted file", async () => {
  const dir = root();
  const file = join(dir, "pgo.toml");
  writeFileSync(file, VALID);
  const log = memoryLogger();
  const ac = new AbortController();
  let result = null as boolean | null;
  void watchConfig(file, VALID, { clock: realClock, logger: log, intervalMs: 10, signal: ac.signal }).then((r) => (result = r));
  writeFileSync(file, VALID);
  rmSync(file);
  const deadline = Date.now() + 5000;
  while (!log.lines.some((l) => l.includes("unreadable")) && Date.now() < deadline) await Bun.sleep(10);
  expect(log.lines.join("\n")).toContain("unreadable");
  writeFileSync(file, VALID);
  await Bun.sleep(100);
  expect(result).toBeNull();
  ac.abort();
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
