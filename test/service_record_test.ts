import { afterAll, expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ServiceConfig } from "../src/config.ts";
import { memoryLogger } from "../src/log.ts";
import { configHash, ServiceRecord } from "../src/service_record.ts";
import { tempDir } from "./helpers.ts";

const root = tempDir("pgo-record-");
afterAll(() => rmSync(root, { recursive: true, force: true }));
const A = "a".repeat(40);
const B = "b".repeat(40);
let n = 0;

function svc(extra: Partial<ServiceConfig> = {}): ServiceConfig {
  return { name: "web", user: "root", repository: "/r", branch: "main", registries: [], env: {}, envKeys: [], urls: [], healthTimeoutMs: 1000, line: 1, ...extra };
}

/** A fresh `<dir>/.state` with the files given for service web. */
function stateRoot(files: Record<string, string> = {}): string {
  const dir = join(root, `s${n++}`, ".state");
  mkdirSync(join(dir, "web"), { recursive: true });
  for (const [f, text] of Object.entries(files)) writeFileSync(join(dir, "web", f), text);
  return dir;
}

test("ServiceRecord keeps good, bad, pin and hold in one state file that a new record reads back", async () => {
  const dir = stateRoot();
  const r = new ServiceRecord(dir, svc(), memoryLogger());
  await r.update({ good: A, bad: B });
  await r.pin(A);
  await r.setHold("down");
  const again = new ServiceRecord(dir, svc(), memoryLogger());
  expect(again.state).toEqual({ good: A, bad: B, pin: { commit: A, config: configHash(svc()) }, hold: "down" });
  expect(again.hold).toBe("down");
  await again.update({}, ["bad"]);
  await again.setHold(null);
  await again.unpin();
  expect(JSON.parse(readFileSync(join(dir, "web", "state.json"), "utf8"))).toEqual({ good: A });
  // Written atomically: no temp file is left beside it.
  expect(readdirSync(join(dir, "web"))).toEqual(["state.json"]);
});

test("ServiceRecord folds an older pgod's hold file into state.json at the first write and removes it", async () => {
  const dir = stateRoot({ "state.json": JSON.stringify({ good: A }), hold: "stop\n" });
  const r = new ServiceRecord(dir, svc(), memoryLogger());
  expect(r.hold).toBe("stop");
  expect(existsSync(join(dir, "web", "hold"))).toBe(true);
  await r.migrate();
  expect(existsSync(join(dir, "web", "hold"))).toBe(false);
  expect(JSON.parse(readFileSync(join(dir, "web", "state.json"), "utf8"))).toEqual({ good: A, hold: "stop" });
  expect(new ServiceRecord(dir, svc(), memoryLogger()).hold).toBe("stop");
});

test("ServiceRecord drops an older hold file that holds nothing known, and releasing a migrated hold removes the file too", async () => {
  const junk = stateRoot({ hold: "maybe\n" });
  const r = new ServiceRecord(junk, svc(), memoryLogger());
  expect(r.hold).toBeNull();
  await r.migrate();
  expect(existsSync(join(junk, "web", "hold"))).toBe(false);

  const held = stateRoot({ hold: "down\n" });
  const h = new ServiceRecord(held, svc(), memoryLogger());
  await h.setHold(null);
  expect(existsSync(join(held, "web", "hold"))).toBe(false);
  expect(new ServiceRecord(held, svc(), memoryLogger()).hold).toBeNull();
});

test("ServiceRecord starts empty from a corrupt state file and writes a whole one at the next change", async () => {
  const dir = stateRoot({ "state.json": '{"good": "aaa' });
  const r = new ServiceRecord(dir, svc(), memoryLogger());
  expect(r.state).toEqual({});
  expect(r.hold).toBeNull();
  await r.update({ good: B });
  expect(new ServiceRecord(dir, svc(), memoryLogger()).state).toEqual({ good: B });
});

test("ServiceRecord releases a pin made under another config, and says so", () => {
  const dir = stateRoot({ "state.json": JSON.stringify({ good: A, pin: { commit: A, config: "0123456789abcdef" } }) });
  const log = memoryLogger();
  const r = new ServiceRecord(dir, svc(), log);
  expect(r.state).toEqual({ good: A });
  expect(log.lines.some((l) => l.includes("config changed: releasing the pin"))).toBe(true);
});

test("ServiceRecord.setHold() throws and keeps the hold when state.json cannot be written", async () => {
  const dir = stateRoot();
  const r = new ServiceRecord(dir, svc(), memoryLogger());
  // A directory where the file should be: the rename over it fails.
  mkdirSync(join(dir, "web", "state.json", "x"), { recursive: true });
  await expect(r.setHold("down")).rejects.toThrow(/Cannot write/);
  expect(r.hold).toBeNull();
  // update() logs instead: the loop goes on with what it knows.
  const log = memoryLogger();
  const q = new ServiceRecord(dir, svc(), log);
  await q.update({ good: A });
  expect(q.state.good).toBe(A);
  expect(log.lines.some((l) => l.includes("cannot save state"))).toBe(true);
});

test("ServiceRecord judges commits from the trust root, then from the last verified commit", async () => {
  const s = svc({ verify: "commits", trustRoot: A });
  const r = new ServiceRecord(stateRoot(), s, memoryLogger());
  expect(r.anchor()).toBe(A);
  expect(r.mayRun(A)).toBe(true);
  expect(r.mayRun(B)).toBe(false);
  await r.markVerified(B);
  expect(r.anchor()).toBe(B);
  expect(r.mayRun(B)).toBe(true);
  expect(new ServiceRecord(stateRoot(), svc(), memoryLogger()).mayRun(B)).toBe(true); // without verify, any
});

test("ServiceRecord appends to the history and closes an attempt a stopped pgod left open", async () => {
  const r = new ServiceRecord(stateRoot(), svc(), memoryLogger());
  await r.record({ commit: A, time: 1, trigger: "start", result: "started", durationMs: 0, id: "x1" });
  expect((await r.closeInterrupted(5)).map((e) => e.commit)).toEqual([A]);
  expect((await r.history()).map((e) => e.result)).toEqual(["interrupted"]);
});
