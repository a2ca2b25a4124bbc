import { expect, test } from "bun:test";
import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { findComposePlugin } from "../src/compose.ts";
import { CommandError } from "../src/errors.ts";
import { asUserArgv, makeRunner, redactArgv } from "../src/exec.ts";
import type { Runner } from "../src/exec.ts";
import { memoryLogger } from "../src/log.ts";
import { tempDir, waitFor } from "./helpers.ts";

const run = makeRunner({ logger: memoryLogger() });
const PATH = "/usr/bin:/bin";

test("a child gets exactly the environment it is given", async () => {
  const r = await run(["env"], { env: { PATH, ONLY: "this" } });
  expect(r.stdout.trim().split("\n").sort()).toEqual(["ONLY=this", `PATH=${PATH}`]);
});

test("a child run as a user has that uid, gid and exactly its groups, never root's", async () => {
  const r = await run(["sh", "-c", "id -u; id -g; id -G"], { env: { PATH }, as: { uid: 65534, gid: 65534, groups: [65534, 4242] } });
  expect(r.stdout.trim().split("\n")).toEqual(["65534", "65534", "65534 4242"]);
});

test("asUserArgv() puts setpriv with the groups in front of the command", () => {
  expect(asUserArgv(["git", "fetch"], { uid: 1000, gid: 100, groups: [100, 998] }))
    .toEqual(["/usr/bin/setpriv", "--reuid=1000", "--regid=100", "--groups=100,998", "--", "git", "fetch"]);
});

test("a non-zero exit throws a CommandError with the code and the tail of stderr", async () => {
  const e = await run(["sh", "-c", "echo oops >&2; exit 7"], { env: { PATH } }).catch((x) => x);
  expect(e).toBeInstanceOf(CommandError);
  expect(e.exitCode).toBe(7);
  expect(e.message).toBe('Command "sh -c echo oops >&2; exit 7" failed: exited with status 7: oops');
});

test("check: false returns the exit code instead of throwing", async () => {
  const r = await run(["sh", "-c", "exit 3"], { env: { PATH }, check: false });
  expect(r.exitCode).toBe(3);
});

test("a missing executable is a CommandError, not a crash", async () => {
  const e = await run(["/nonexistent/tool"], { env: { PATH } }).catch((x) => x);
  expect(e).toBeInstanceOf(CommandError);
  expect(e.message).toContain("could not start");
});

test("a timeout ends the whole process group, grandchildren included", async () => {
  let pid = 0;
  const e = await run(["sh", "-c", "sleep 60 & echo $!; wait"], {
    env: { PATH },
    timeoutMs: 300,
    onStdout: (c) => void (pid = Number(new TextDecoder().decode(c).trim())),
  }).catch((x) => x);
  expect(e).toBeInstanceOf(CommandError);
  expect(e.timedOut).toBe(true);
  expect(pid).toBeGreaterThan(0);
  await waitFor(() => !existsSync(`/proc/${pid}`), 5000, "the timed-out command's process to be gone");
});

test("an abort signal ends the command", async () => {
  const ac = new AbortController();
  const p = run(["sleep", "60"], { env: { PATH }, signal: ac.signal, check: false });
  setTimeout(() => ac.abort(), 100);
  const r = await p;
  expect(r.signal).toBe("SIGTERM");
});

test("streamed output is handed over chunk by chunk and awaited", async () => {
  const chunks: string[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  await run(["sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.05; done"], {
    env: { PATH },
    onStdout: async (c) => {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      chunks.push(new TextDecoder().decode(c));
      await Bun.sleep(10);
      inFlight--;
    },
  });
  expect(chunks.join("")).toBe("1\n2\n3\n");
  expect(maxInFlight).toBe(1);
});

test("the observer counts every tagged command with its outcome", async () => {
  const seen: string[] = [];
  const r2 = makeRunner({ logger: memoryLogger(), observe: (t, ok) => seen.push(`${t.cmd} ${t.subcmd} ${ok}`) });
  await r2(["true"], { env: { PATH }, tag: { service: "s", cmd: "git", subcmd: "fetch" } });
  await r2(["false"], { env: { PATH }, tag: { service: "s", cmd: "git", subcmd: "fetch" } }).catch(() => {});
  expect(seen).toEqual(["git fetch true", "git fetch false"]);
});

test("debug logs name env variables but never their values, and hide passwords in argv", async () => {
  const log = memoryLogger(true);
  const r3 = makeRunner({ logger: log });
  await r3(["true", "-p", "hunter2", "https://user:tok@host/x"], { env: { PATH, SECRET: "s3cr3t" } });
  const line = log.lines.join("\n");
  expect(line).toContain("SECRET");
  expect(line).not.toContain("s3cr3t");
  expect(line).not.toContain("hunter2");
  expect(line).not.toContain("tok@");
  expect(redactArgv(["docker", "login", "--password", "x"])).toEqual(["docker", "login", "--password", "***"]);
});

test("with the compose plugin known, docker compose runs it directly and logs what was asked; other docker commands do not", async () => {
  const dir = tempDir();
  try {
    const plugin = join(dir, "docker-compose");
    writeFileSync(plugin, '#!/bin/sh\necho "plugin $*"\n', { mode: 0o755 });
    const log = memoryLogger(true);
    const holder: { path: string | null } = { path: null };
    const run = makeRunner({ logger: log, composePlugin: holder });
    const env = { PATH: process.env["PATH"] ?? "/usr/bin:/bin" };
    holder.path = plugin;
    expect((await run(["docker", "compose", "--project-name", "p", "ps"], { env })).stdout).toBe("plugin --project-name p ps\n");
    expect((await run(["sh", "-c", "echo compose"], { env })).stdout).toBe("compose\n");
    expect(log.lines.some((l) => l.includes('argv="docker compose --project-name p ps"'))).toBe(true);
    // Not known (any more): the docker CLI as always.
    holder.path = null;
    const r = await run(["docker", "compose", "version"], { env: { PATH: dir }, check: false }).catch((e: Error) => e);
    expect(String(r)).toContain("docker compose");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("findComposePlugin() takes the path docker info names only when it is an executable docker-compose", async () => {
  const dir = tempDir();
  try {
    const good = join(dir, "docker-compose");
    writeFileSync(good, "#!/bin/sh\n", { mode: 0o755 });
    const privateOne = join(dir, "private", "docker-compose");
    mkdirSync(dirname(privateOne));
    writeFileSync(privateOne, "#!/bin/sh\n", { mode: 0o700 });
    const says = (stdout: string): Runner => async () => ({ exitCode: 1, signal: null, stdout, stderr: "Cannot connect", durationMs: 1, timedOut: false });
    expect(await findComposePlugin(says(`${good}\n`), {})).toBe(good);
    expect(await findComposePlugin(says(""), {})).toBeNull();
    expect(await findComposePlugin(says("docker-compose"), {})).toBeNull();
    expect(await findComposePlugin(says(join(dir, "missing", "docker-compose")), {})).toBeNull();
    expect(await findComposePlugin(says(privateOne), {})).toBeNull(); // service users could not run it
    expect(await findComposePlugin(async () => Promise.reject(new Error("no docker")), {})).toBeNull();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
