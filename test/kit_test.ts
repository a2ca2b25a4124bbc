/** The test toolkit itself (test/kit/): waits, processes and repositories behave as the suites rely on. */
import { expect, test } from "bun:test";
import { readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { canConnect, freePort, run, runSync } from "./kit/process.ts";
import { Repo, writeTree } from "./kit/repo.ts";
import { tempDir } from "./kit/temp.ts";
import { GiveUp, holdsFor, waitFor, waitForValue } from "./kit/wait.ts";

test("waitFor() returns the first accepted value, retries a probe that throws, and stops at once on GiveUp", async () => {
  let n = 0;
  const v = await waitFor("n to reach 3", () => {
    if (++n === 1) throw new Error("not yet");
    return n;
  }, (x) => x >= 3, { intervalMs: 1 });
  expect(v).toBe(3);
  const t0 = Date.now();
  await expect(waitFor("never", () => { throw new GiveUp("gone"); }, () => true, { timeoutMs: 10_000 })).rejects.toThrow("gone");
  await expect(waitFor("never", () => { throw new Error("broken"); }, () => true, { timeoutMs: 10_000, retryErrors: false })).rejects.toThrow("broken");
  expect(Date.now() - t0).toBeLessThan(5_000);
});

test("waitFor() times out naming what it waited for and the last value seen", async () => {
  await expect(waitFor("the answer", () => 41, (x) => x === 42, { timeoutMs: 30, intervalMs: 5 }))
    .rejects.toThrow(/Timed out after 30 ms waiting for the answer; last seen: 41/);
  expect(await waitForValue("a value", () => (Math.random() < 2 ? "x" : undefined), { intervalMs: 1 })).toBe("x");
});

test("holdsFor() passes while the condition holds and throws as soon as it breaks", async () => {
  await holdsFor("calm", 30, () => 1, (x) => x === 1, 5);
  let n = 0;
  const t0 = Date.now();
  await expect(holdsFor("n below 3", 10_000, () => ++n, (x) => x < 3, 1)).rejects.toThrow("Expected n below 3 for 10000 ms, but saw: 3");
  expect(Date.now() - t0).toBeLessThan(5_000);
});

test("run() collects stdout, stderr, status and duration, and throws with argv and stderr when checked", async () => {
  const r = await run(["sh", "-c", "echo out; echo err >&2; exit 3"], { check: false });
  expect({ code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({ code: 3, stdout: "out\n", stderr: "err\n" });
  expect(r.ms).toBeGreaterThan(0);
  await expect(run(["sh", "-c", "echo bad >&2; exit 1"])).rejects.toThrow(/"sh","-c".* exited 1 .*: bad/);
  expect((await run(["cat"], { stdin: "in" })).stdout).toBe("in");
  expect((await run(["sleep", "5"], { check: false, timeoutMs: 50 })).code).not.toBe(0);
  expect(runSync(["echo", "hi"])).toBe("hi\n");
  expect(() => runSync(["false"])).toThrow("false");
});

test("freePort() gives a port nothing listens on, and canConnect() tells a listening one from it", async () => {
  const port = freePort();
  expect(await canConnect(port)).toBe(false);
  const server = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  try {
    expect(await canConnect(server.port)).toBe(true);
  } finally {
    server.stop(true);
  }
});

test("Repo commits and pushes files (null deletes one), and forcePush rewinds main", async () => {
  const root = tempDir("pgo-kit-");
  try {
    const repo = await Repo.create(root, { "a.txt": "1\n", "d/b.txt": "2\n" });
    const first = (await run(["git", "-C", repo.bare, "rev-parse", "main"])).stdout.trim();
    const second = await repo.commit({ "a.txt": null, "d/c.txt": "3\n" }, "second");
    expect((await run(["git", "-C", repo.bare, "rev-parse", "main"])).stdout.trim()).toBe(second);
    expect((await run(["git", "-C", repo.bare, "ls-tree", "-r", "--name-only", "main"])).stdout).toBe("d/b.txt\nd/c.txt\n");
    await repo.forcePush(first);
    expect((await run(["git", "-C", repo.bare, "rev-parse", "main"])).stdout.trim()).toBe(first);
    writeTree(root, { "x/y/z": "deep" });
    expect(readFileSync(join(root, "x/y/z"), "utf8")).toBe("deep");
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test("the toolkit imports nothing of bun:test, so the benchmark can use it", () => {
  const dir = join(import.meta.dir, "kit");
  for (const f of readdirSync(dir)) expect({ f, imports: readFileSync(join(dir, f), "utf8").includes('"bun:test"') }).toEqual({ f, imports: false });
});
