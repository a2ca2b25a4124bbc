import { afterEach, describe, expect, test } from "bun:test";
import { appendFile, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { appendHistory, readHistory } from "../src/history.ts";
import type { HistoryEntry } from "../src/history.ts";

const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

function entry(commit: string): HistoryEntry {
  return { commit, time: 1, trigger: "poll", result: "deployed", durationMs: 5 };
}

describe("appendHistory()", () => {
  test("an entry appended after a torn last line starts a line of its own and is read back", async () => {
    const dir = await mkdtemp(join(tmpdir(), "history-"));
    dirs.push(dir);
    const file = join(dir, "history");
    await appendHistory(file, entry("a"));
    await appendFile(file, '{"commit":"b","ti');
    await appendHistory(file, entry("c"));
    expect((await readHistory(file)).map((e) => e.commit)).toEqual(["a", "c"]);
    const lines = (await readFile(file, "utf8")).split("\n");
    expect(lines).toEqual([JSON.stringify(entry("a")), '{"commit":"b","ti', JSON.stringify(entry("c")), ""]);
  });
});
