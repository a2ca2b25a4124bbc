/**
 * Each service's evaluations run in their own cgroup, with the real kernel: a memory or process
 * hog in one service's cgroup is stopped there while another service's evaluation succeeds.
 * Runs as root (cgroups are root's); every cgroup made here is removed again.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { rmdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { makeCgroups, oomKills, pidsRefusals, removeCgroups, removeStaleCgroups } from "../src/cgroup.ts";
import type { ComposeTarget } from "../src/compose.ts";
import { composeModel } from "../src/compose_model.ts";
import { joinCgroupsArgv, makeRunner } from "../src/exec.ts";
import { memoryLogger } from "../src/log.ts";
import { tempDir } from "./helpers.ts";

const runner = makeRunner({ logger: memoryLogger(false) });
const scratch = tempDir("pgo-cgroup-");
const made: string[][] = [];
const PREFIX = `cgtest${process.pid}`;
const MiB = 1024 * 1024;
const ENV = { PATH: "/usr/local/bin:/usr/bin:/bin" };

async function cgroup(tag: string, memoryMiB: number, pids?: number): Promise<string[]> {
  const dirs = await makeCgroups(`${PREFIX}-${tag}`, { memoryBytes: memoryMiB * MiB, ...(pids ? { pids } : {}) });
  made.push(dirs);
  return dirs;
}

afterAll(async () => {
  const left = (await Promise.all(made.map((d) => removeCgroups(d)))).filter((ok) => !ok);
  // The shared "pgo" parents too, when nothing else uses them.
  await Promise.all([...new Set(made.flat().map((d) => dirname(d)))].map((p) => rmdir(p).catch(() => {})));
  rmSync(scratch, { recursive: true, force: true });
  // No directory of this test is left in any hierarchy.
  expect({ left: left.length, dirs: made.flat().filter((d) => existsSync(d)) }).toEqual({ left: 0, dirs: [] });
});

function project(name: string, compose: string): ComposeTarget {
  const dir = join(scratch, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "compose.yaml"), compose);
  return {
    project: name, dir, file: "compose.yaml", env: {}, dockerConfig: join(dir, ".docker"),
    account: { name: "root", uid: 0, gid: 0, groups: [0], home: dir },
  };
}

const probe = await makeCgroups(`${PREFIX}-probe`, { memoryBytes: 64 * MiB, pids: 64 });
await removeCgroups(probe);
const usable = probe.length > 0;

describe("makeCgroups()", () => {
  test("rejects a name that is not a plain path component, and a bad limit", async () => {
    await expect(makeCgroups("../x", { memoryBytes: MiB })).rejects.toThrow('Cannot make a cgroup for "../x": not a plain name');
    await expect(makeCgroups("x", { memoryBytes: MiB, pids: 0 })).rejects.toThrow('Cannot make a cgroup for "x": bad limit');
  });

  test.skipIf(!usable)("makes one cgroup limited in memory and in processes, and removes it without a trace", async () => {
    const dirs = await cgroup("limits", 96, 40);
    for (const d of dirs) expect(d).toEndWith(`/pgo/${PREFIX}-limits`);
    const read = (f: string): string | undefined => dirs.map((d) => join(d, f)).filter(existsSync).map((p) => readFileSync(p, "utf8").trim())[0];
    expect(read("memory.limit_in_bytes") ?? read("memory.max")).toBe(String(96 * MiB));
    expect(read("pids.max")).toBe("40");
    // A child started in them is in every one (cgroup v1 keeps memory and pids apart).
    const r = await runner(["cat", "/proc/self/cgroup"], { env: ENV, cgroup: dirs, timeoutMs: 10_000 });
    expect(r.stdout.split("\n").filter((l) => l.endsWith(`/pgo/${PREFIX}-limits`)).length).toBe(dirs.length);
    expect(await removeCgroups(dirs)).toBe(true);
    expect(dirs.filter((d) => existsSync(d))).toEqual([]);
  });

  test("joinCgroupsArgv() runs nothing when a cgroup cannot be joined", async () => {
    const marker = join(scratch, "ran");
    const argv = joinCgroupsArgv([join(scratch, "no-such-cgroup")], ["/bin/sh", "-c", `: > ${marker}`]);
    const r = await runner(argv, { env: ENV, check: false, timeoutMs: 10_000 });
    expect(r.exitCode).toBe(125);
    expect(existsSync(marker)).toBe(false);
  });
});

describe.skipIf(!usable)("separate evaluations", () => {
  test("a memory hog in service A's cgroup is killed while B's evaluation, at the same time, succeeds", async () => {
    const [a, b] = await Promise.all([cgroup("a", 128, 256), cgroup("b", 128, 256)]);
    // Bounded: the child stops by itself at 2 GiB, and the runner's timeout ends it in any case.
    const hog = runner([
      process.execPath, "-e", "const a = []; for (let i = 0; i < 128; i++) a.push(Buffer.alloc(16 << 20, 1)); console.log('survived')",
    ], { env: ENV, cgroup: a, check: false, timeoutMs: 60_000 });
    const good = project("cgb", "services:\n  web:\n    image: pgo-busybox:1\n    pull_policy: never\n");
    const evaluations = Promise.all([1, 2, 3].map(() => composeModel(runner, good, { cgroupDir: b })));
    const [killed, models] = await Promise.all([hog, evaluations]);
    expect([killed.exitCode, killed.signal, killed.stdout]).toEqual([137, "SIGKILL", ""]);
    expect(await oomKills(a[0]!)).toBeGreaterThan(0);
    for (const m of models) expect((m as { services: Record<string, unknown> }).services).toHaveProperty("web");
    expect(await oomKills(b[0]!)).toBe(0);
  }, 120_000);

  test("env_file: /dev/zero in A is refused for its memory limit while B's compose file evaluates", async () => {
    const [a, b] = await Promise.all([cgroup("za", 128, 256), cgroup("zb", 128, 256)]);
    const zero = project("cgza", "services:\n  web:\n    image: pgo-busybox:1\n    pull_policy: never\n    env_file: /dev/zero\n");
    const good = project("cgzb", "services:\n  web:\n    image: pgo-busybox:1\n    pull_policy: never\n    environment: [A=1]\n");
    const [bad, model] = await Promise.all([
      composeModel(runner, zero, { cgroupDir: a, timeoutMs: 60_000 }).then(() => null, (e: unknown) => e as Error),
      composeModel(runner, good, { cgroupDir: b }),
    ]);
    expect(bad?.message).toBe('docker compose rejects "compose.yaml": it ran out of its memory limit');
    expect(JSON.stringify(model)).toContain('"A":"1"');
  }, 120_000);

  test("the pids limit stops a fork loop, and the cgroup empties and goes away after", async () => {
    const dirs = await cgroup("forks", 128, 16);
    // Bounded: at most 200 children of one second each, and a timeout.
    const loop = "i=0; while [ $i -lt 200 ]; do sleep 1 & i=$((i+1)); done; wait";
    const r = await runner(["/bin/sh", "-c", loop], { env: ENV, cgroup: dirs, check: false, timeoutMs: 30_000 });
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/fork/i);
    const pidsDir = dirs.find((d) => existsSync(join(d, "pids.max")))!;
    expect(await pidsRefusals(pidsDir)).toBeGreaterThan(0);
    expect(Number(readFileSync(join(pidsDir, "pids.current"), "utf8"))).toBeLessThanOrEqual(16);
    expect(await removeCgroups(dirs)).toBe(true);
    expect(dirs.filter((d) => existsSync(d))).toEqual([]);
  }, 60_000);

  test("docker compose config runs within the default limits of a service", async () => {
    const dirs = await cgroup("default", 1024, 256);
    const model = await composeModel(runner, project("cgdef", "services:\n  web:\n    image: pgo-busybox:1\n    pull_policy: never\n"), { cgroupDir: dirs });
    expect(JSON.stringify(model)).toContain("pgo-busybox:1");
  }, 60_000);
});

describe.skipIf(!usable)("removeStaleCgroups()", () => {
  test("removes the empty cgroups of a pgod that is gone and keeps those of one that runs", async () => {
    const gone = await cgroup("99999999-web", 64, 16);
    const alive = await cgroup(`${process.pid}-web`, 64, 16);
    const removed = await removeStaleCgroups(PREFIX, (pid) => pid === process.pid);
    expect(removed.sort()).toEqual([...gone].sort());
    expect(alive.every((d) => existsSync(d))).toBe(true);
    expect(gone.some((d) => existsSync(d))).toBe(false);
    expect(dirname(alive[0]!)).toEndWith("/pgo");
  });
});
