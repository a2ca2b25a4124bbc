import { afterAll, expect, test } from "bun:test";
import { readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readState, writeState } from "../src/state.ts";
import { tempDir } from "./helpers.ts";

const dir = tempDir("pgo-state-");
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const A = "a".repeat(40);
const B = "b".repeat(40);

test("writeState() and readState() keep good, bad and pin, in a file only root reads", async () => {
  const file = join(dir, "x", "state.json");
  await writeState(file, { good: A, bad: B, pin: { commit: A, config: "c1" } });
  expect(readState(file)).toEqual({ good: A, bad: B, pin: { commit: A, config: "c1" } });
  expect(statSync(file).mode & 0o777).toBe(0o600);
  expect(readFileSync(file, "utf8").endsWith("\n")).toBe(true);
});

test("readState() gives an empty state for a missing, torn or hostile file and drops bad fields", () => {
  expect(readState(join(dir, "missing.json"))).toEqual({});
  const f = join(dir, "bad.json");
  writeFileSync(f, '{"good": "aaaa');
  expect(readState(f)).toEqual({});
  writeFileSync(f, "null");
  expect(readState(f)).toEqual({});
  writeFileSync(f, JSON.stringify({ good: "not-a-commit", bad: B, pin: { commit: "../../etc", config: "x" }, extra: 1 }));
  expect(readState(f)).toEqual({ bad: B });
  writeFileSync(f, JSON.stringify({ pin: { commit: A } }));
  expect(readState(f)).toEqual({});
});

test("writeState() and readState() keep the verified commits, and drop a record with a bad root or commits that are not ids", async () => {
  const file = join(dir, "v", "state.json");
  await writeState(file, { good: A, verified: { root: A, last: B, commits: [A, B] } });
  expect(readState(file)).toEqual({ good: A, verified: { root: A, last: B, commits: [A, B] } });
  writeFileSync(file, JSON.stringify({ verified: { root: A, last: B, commits: [B, "../x", 7] } }));
  expect(readState(file)).toEqual({ verified: { root: A, last: B, commits: [B] } });
  writeFileSync(file, JSON.stringify({ verified: { root: "HEAD", last: B, commits: [B] } }));
  expect(readState(file)).toEqual({});
});

test("readState() keeps a down or stop hold and drops any other", async () => {
  const file = join(dir, "h", "state.json");
  await writeState(file, { good: A, hold: "stop" });
  expect(readState(file)).toEqual({ good: A, hold: "stop" });
  writeFileSync(file, JSON.stringify({ good: A, hold: "up" }));
  expect(readState(file)).toEqual({ good: A });
});
