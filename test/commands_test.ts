import { EX, RollbackError } from "../src/errors.ts";
import { expect, test } from "bun:test";
import { checkArgs, dispatch, formatStatus } from "../src/commands.ts";
import type { RouterDeps, ServiceHandle } from "../src/commands.ts";
import type { Compose } from "../src/compose.ts";
import type { RunResult } from "../src/exec.ts";
import type { KeyOptions } from "../src/keys.ts";
import { memoryLogger } from "../src/log.ts";
import { EXIT_TEMPFAIL, LongRunning } from "../src/long_running.ts";
import type { Hold, ServiceStatus } from "../src/reconcile.ts";
import type { ClientKey, SessionIO } from "../src/ssh_session.ts";
import type { Verdict } from "../src/verdict.ts";

const KEY_A: ClientKey = { algo: "ssh-ed25519", blob: Buffer.from("key-a"), fingerprint: "SHA256:a" };
const KEY_B: ClientKey = { algo: "ssh-ed25519", blob: Buffer.from("key-b"), fingerprint: "SHA256:b" };

const OK: Verdict = { commit: "c".repeat(40), branch: "main", running: "c".repeat(40), refusal: null, findings: [] };

function fakeService(opts: { cloned?: boolean; exitCode?: number; verdict?: Verdict; refused?: ServiceStatus["refused"]; stopFile?: string } = {}) {
  const calls: string[] = [];
  let hold: Hold | null = null;
  let locked = 0;
  const status = (): ServiceStatus => ({
    name: "web", commit: opts.cloned === false ? null : "abc", deployedAt: null, lastResult: null, lastError: null,
    stopFile: false, nextPollAt: null, lastPollAt: null, hold, pinned: null, good: null, bad: null, refused: opts.refused ?? null,
  });
  const result = (stdout: string): RunResult => ({ exitCode: opts.exitCode ?? 0, signal: null, stdout, stderr: "", durationMs: 1, timedOut: false });
  const compose: Compose = {
    async run(args, io) {
      calls.push(`${locked ? "locked " : ""}${args.join(" ")}`);
      await io?.onStdout?.(new TextEncoder().encode(`ran ${args[0]}\n`));
      return result("");
    },
    async must(args) {
      calls.push(args.join(" "));
      return result("");
    },
    async services() {
      return ["web"];
    },
    withRegistries: (_r, fn) => fn(),
  };
  const handle: ServiceHandle = {
    status,
    async exclusive(fn) {
      locked++;
      try {
        return await fn();
      } finally {
        locked--;
      }
    },
    async composeFor() {
      return compose;
    },
    async restoreNow() {
      calls.push(`${locked ? "locked " : ""}restore`);
    },
    async deployNow(_t, { io, services = [] }) {
      calls.push(`${locked ? "locked " : ""}deploy ${services.join(" ")}`.trim());
      await io.onStdout?.(new TextEncoder().encode("deployed\n"));
      return opts.exitCode ?? 0;
    },
    async pullNow(io, services = []) {
      calls.push(`${locked ? "locked " : ""}pull ${services.join(" ")}`.trim());
      await io.onStdout?.(new TextEncoder().encode("pulled\n"));
      return 0;
    },
    async setHold(h) {
      hold = h;
    },
    async check() {
      return opts.verdict ?? OK;
    },
    async rollbackTo(rev) {
      calls.push(`${locked ? "locked " : ""}rollback ${rev ?? "previous"}`);
      return 0;
    },
    async unpin() {
      calls.push("unpin");
    },
    async syncNow() {
      calls.push("sync");
      return status();
    },
    stopFileNow: async () => opts.stopFile ?? null,
    async recipient() {
      calls.push("recipient");
      return "age1testrecipient";
    },
    historyFile: "/nonexistent/history",
  };
  return { handle, calls, hold: () => hold };
}

function harness(svc = fakeService(), lines: Array<KeyOptions | undefined> = [undefined]) {
  const counted: string[] = [];
  const deps: RouterDeps = {
    services: new Map([["web", svc.handle]]),
    keysOf: async (name) => (name === "web" ? lines.map((options) => ({ algo: KEY_A.algo, blob: KEY_A.blob, comment: "", ...(options ? { options } : {}) })) : []),
    hostname: "box",
    logger: memoryLogger(),
    count: (c, r) => counted.push(`${c} ${r}`),
  };
  const call = async (request: string, key = KEY_A) => {
    let stdout = "";
    let stderr = "";
    const io: SessionIO = {
      stdout: { write: async (c) => void (stdout += typeof c === "string" ? c : new TextDecoder().decode(c)) },
      stderr: { write: async (c) => void (stderr += typeof c === "string" ? c : new TextDecoder().decode(c)) },
      signal: new AbortController().signal,
    };
    const status = await dispatch(key, request, io, deps);
    return { status, stdout, stderr };
  };
  return { call, counted, svc };
}

test("dispatch() answers ping with pong and the host name", async () => {
  const { call } = harness();
  expect(await call("web//ping")).toEqual({ status: 0, stdout: "pong box\n", stderr: "" });
});

test("dispatch() gives an unknown service and a foreign key the same answer", async () => {
  const { call, counted } = harness();
  const unknown = await call("nosuch//ps");
  const foreign = await call("web//ps", KEY_B);
  expect(unknown.status).toBe(EX.noperm);
  expect(foreign.status).toBe(EX.noperm);
  expect(unknown.stderr.replace("nosuch", "X")).toBe(foreign.stderr.replace("web", "X"));
  expect(counted).toEqual(["ps denied", "ps denied"]);
});

test("dispatch() refuses a malformed request and an unknown command with 64", async () => {
  const { call } = harness();
  expect((await call("no-slashes")).status).toBe(EX.usage);
  expect((await call("web//ps; touch /tmp/x")).status).toBe(EX.usage);
  const r = await call("web//frobnicate");
  expect(r.status).toBe(EX.usage);
  expect(r.stderr).toContain('Unknown command "frobnicate"');
  expect((await call("web//ps 'unterminated")).status).toBe(EX.usage);
});

test("dispatch() checks the key before it says a command is unknown", async () => {
  const { call } = harness();
  expect((await call("web//frobnicate", KEY_B)).status).toBe(EX.noperm);
});

test("dispatch() passes the compose exit status through", async () => {
  const { call } = harness(fakeService({ exitCode: 42 }));
  expect((await call("web//exec web sh -c 'exit 42'")).status).toBe(42);
});

test("dispatch() runs exec as docker compose exec -T with the argv intact", async () => {
  const svc = fakeService();
  const { call } = harness(svc);
  await call(`web//exec web sh -c "echo 'a b'; ls"`);
  expect(svc.calls).toEqual(["exec -T web sh -c echo 'a b'; ls"]);
});

test("dispatch() refuses exec options such as --privileged", async () => {
  const { call, svc } = harness();
  const r = await call("web//exec --privileged web sh");
  expect(r.status).toBe(EX.usage);
  expect(svc.calls).toEqual([]);
});

test("dispatch() lets logs take --tail and -f but not other options", async () => {
  const { call, svc } = harness();
  expect((await call("web//logs --tail 5 -f web")).status).toBe(0);
  expect(svc.calls).toEqual(["logs --tail 5 -f web"]);
  expect((await call("web//logs --project-directory /")).status).toBe(EX.usage);
});

test("dispatch() runs up, down, stop, start, restart and pull under the service lock, start and restart on a restored checkout; ps, logs and exec without it", async () => {
  const { call, svc } = harness();
  for (const c of ["up", "down", "stop", "start", "restart", "pull", "ps", "logs", "exec web true"]) await call(`web//${c}`);
  expect(svc.calls).toEqual([
    "locked deploy", "locked down --remove-orphans", "locked stop", "locked restore", "locked start", "locked restore", "locked restart",
    "locked pull", "ps", "logs", "exec -T web true",
  ]);
});

test("dispatch() makes down and stop hold the service, and up, start or restart release it", async () => {
  const { call, svc } = harness();
  await call("web//down");
  expect(svc.hold()).toBe("down");
  await call("web//up");
  expect(svc.hold()).toBeNull();
  await call("web//stop");
  expect(svc.hold()).toBe("stop");
  await call("web//restart");
  expect(svc.hold()).toBeNull();
});

test("dispatch() answers 69 while the service is not cloned yet", async () => {
  const { call } = harness(fakeService({ cloned: false }));
  const r = await call("web//ps");
  expect(r.status).toBe(EX.unavailable);
  expect(r.stderr).toContain("not cloned yet");
  expect((await call("web//ping")).status).toBe(0);
});

test("dispatch() shows status with hold and stop file", async () => {
  const { call } = harness();
  await call("web//stop");
  const r = await call("web//status");
  expect(r.stdout).toContain("service:     web");
  expect(r.stdout).toContain("hold:        stop");
  expect(r.stdout).toContain("stop file:   absent");
});

test("dispatch() accepts load as the original's name for check", async () => {
  const { call } = harness();
  const ok = `ok: commit ${"c".repeat(12)}, the newest of branch "main", may be deployed (it runs now)\n`;
  expect(await call("web//load")).toEqual({ status: 0, stdout: ok, stderr: "" });
  expect(await call("web//check")).toEqual({ status: 0, stdout: ok, stderr: "" });
});

test("check exits 1 naming the refused commit, the file, line, service, key path, rule and reason", async () => {
  const verdict: Verdict = {
    commit: "b".repeat(40), branch: "main", running: "a".repeat(40), refusal: 'compose file "compose.yaml" service "web": "privileged" is refused: why',
    findings: [
      { file: "compose.yaml", line: 7, service: "web", key: "services.web.privileged", rule: "privileged", reason: "it is root on the host" },
      { file: "compose.yaml", service: "db", key: "services.db.volumes", rule: "bind_outside", reason: "host files", value: "/etc" },
    ],
  };
  const { call } = harness(fakeService({ verdict }));
  expect(await call("web//check")).toEqual({
    status: 1,
    stdout: [
      `refused: commit ${"b".repeat(12)}, the newest of branch "main" (${"a".repeat(12)} runs now and keeps running)`,
      'compose.yaml:7: service "web": services.web.privileged (rule privileged): it is root on the host',
      'compose.yaml: service "db": services.db.volumes (rule bind_outside): host files: "/etc"',
      "",
    ].join("\n"),
    stderr: "",
  });
});

test("check without policy findings prints the refusal, and says when the remote could not be asked", async () => {
  const verdict: Verdict = {
    commit: "b".repeat(40), branch: "main", running: "b".repeat(40), refusal: 'docker compose rejects "compose.yaml": it ran out of its memory limit',
    findings: [], stale: "git fetch exited with status 128", pinned: "a".repeat(40),
  };
  const { call } = harness(fakeService({ verdict }));
  expect(await call("web//check")).toEqual({
    status: 1,
    stdout: [
      `refused: commit ${"b".repeat(12)}, the newest of branch "main" (it runs now)`,
      'docker compose rejects "compose.yaml": it ran out of its memory limit',
      `pinned at ${"a".repeat(12)}: nothing newer deploys until "unpin"`,
      "",
    ].join("\n"),
    stderr: 'Cannot fetch branch "main": git fetch exited with status 128; judged the last fetched commit\n',
  });
});

test("check before the first deploy says that nothing is deployed", async () => {
  const verdict: Verdict = { ...OK, running: null, refusal: "why", findings: [] };
  const { call } = harness(fakeService({ verdict }));
  expect(await call("web//check")).toEqual({
    status: 1, stdout: `refused: commit ${"c".repeat(12)}, the newest of branch "main" (nothing is deployed)\nwhy\n`, stderr: "",
  });
});

test("status names the refused commit and the refusal, one reason a line", async () => {
  const refused = { commit: "b".repeat(40), reason: "first reason\nsecond reason" };
  const { call } = harness(fakeService({ refused }));
  const r = await call("web//status");
  expect(r.stdout).toContain(`\nrefused:     ${"b".repeat(40)} (not deployed; what runs keeps running)\nrefusal:     first reason\n             second reason\n`);
  expect((await harness().call("web//status")).stdout).toContain("\nrefused:     none\n");
  expect((await harness().call("web//status")).stdout).not.toContain("refusal:");
});

test("checkArgs() allows only documented options and service names", () => {
  expect(checkArgs("down", ["-v"])).toEqual(["-v"]);
  expect(checkArgs("ps", ["--format", "json"])).toEqual(["--format", "json"]);
  expect(checkArgs("logs", ["--tail=3"])).toEqual(["--tail=3"]);
  expect(() => checkArgs("up", ["--build"])).toThrow('Option "--build" is not allowed for "up"');
  expect(() => checkArgs("down", ["web"])).toThrow('Invalid argument "web" for "down"');
  expect(() => checkArgs("ping", ["x"])).toThrow('Command "ping" takes no arguments');
  expect(() => checkArgs("logs", ["--tail"])).toThrow('Option "--tail" of "logs" needs a value');
});

test("dispatch() runs rollback under the lock and checks its argument", async () => {
  const { call, svc } = harness();
  expect((await call("web//rollback")).status).toBe(0);
  expect((await call("web//rollback abc1234")).status).toBe(0);
  expect((await call("web//rollback 'HEAD~1'")).status).toBe(EX.usage);
  expect(svc.calls).toEqual(["locked rollback previous", "locked rollback abc1234"]);
});

test("dispatch() answers history with no deploys yet and refuses a bad count", async () => {
  const { call } = harness();
  expect(await call("web//history")).toEqual({ status: 0, stdout: "no deploys yet\n", stderr: "" });
  expect((await call("web//history 0")).status).toBe(EX.usage);
  expect((await call("web//history 5 6")).status).toBe(EX.usage);
});

test("dispatch() runs sync and unpin", async () => {
  const { call, svc } = harness();
  expect(await call("web//sync")).toEqual({ status: 0, stdout: "at abc: not deployed\n", stderr: "" });
  expect((await call("web//unpin")).stdout).toBe("unpinned: new commits are pulled again\n");
  expect(svc.calls).toEqual(["sync", "unpin"]);
});

test("dispatch() prints the service's age recipient and refuses arguments to it", async () => {
  const { call, svc } = harness();
  expect(await call("web//recipient")).toEqual({ status: 0, stdout: "age1testrecipient\n", stderr: "" });
  expect((await call("web//recipient extra")).status).toBe(64);
  expect(svc.calls).toEqual(["recipient"]);
});

test("dispatch() lets a key line with from= in only from a matching address, with the answer of an unknown service otherwise", async () => {
  const { call } = harness(fakeService(), [{ from: ["10.0.0.0/8", "!10.9.9.9"] }]);
  expect((await call("web//ping", { ...KEY_A, ip: "10.1.2.3" })).status).toBe(0);
  const outside = await call("web//ping", { ...KEY_A, ip: "192.0.2.1" });
  const negated = await call("web//ping", { ...KEY_A, ip: "10.9.9.9" });
  const noAddress = await call("web//ping");
  const unknown = await call("nosuch//ping", { ...KEY_A, ip: "10.1.2.3" });
  for (const r of [outside, negated, noAddress]) expect(r).toEqual({ ...unknown, stderr: unknown.stderr.replace("nosuch", "web") });
  expect(unknown.status).toBe(EX.noperm);
});

test("dispatch() runs a key's command= instead of the request, unless another line of the key has none", async () => {
  const forced = harness(fakeService(), [{ command: "sync" }]);
  expect(await forced.call("web//down")).toEqual({ status: 0, stdout: expect.stringContaining("at abc") as unknown as string, stderr: "" });
  expect(forced.svc.calls).toEqual(["sync"]);
  expect((await forced.call("web//ping")).stdout).not.toContain("pong");

  const full = harness(fakeService(), [{ command: "web//ps --all" }]);
  expect(await full.call("web//down")).toMatchObject({ status: 0 });
  expect(full.svc.calls).toEqual(["ps --all"]);

  const elsewhere = harness(fakeService(), [{ command: "other//ping" }]);
  expect(await elsewhere.call("web//ping")).toMatchObject({ status: EX.noperm, stderr: expect.stringContaining("names another service") as unknown as string });

  const either = harness(fakeService(), [{ command: "sync" }, undefined]);
  expect((await either.call("web//ping")).stdout).toBe("pong box\n");
});

test("dispatch() gives a refused rollback the status of its reason, and a failing git an internal error", async () => {
  const svc = fakeService();
  const cases: [unknown, number][] = [
    [new RollbackError("unknown commit", 'Cannot find commit "abcd" in the checkout'), EX.usage],
    [new RollbackError("nothing earlier", "Cannot roll back: no earlier commit deployed well"), EX.unavailable],
    [new RollbackError("unverified", "Cannot roll back to abcd: it did not verify"), EX.dataerr],
    [new Error('Command "git rev-parse" failed: exited with status 128'), EX.software],
  ];
  const { call } = harness(svc);
  for (const [err, status] of cases) {
    svc.handle.rollbackTo = async () => {
      throw err;
    };
    const r = await call("web//rollback abcd");
    expect({ status: r.status, said: r.stderr.includes((err as Error).message) }).toEqual({ status, said: true });
  }
});

test("dispatch() refuses up, start, restart and rollback while the stop file exists, naming it, and runs nothing", async () => {
  const svc = fakeService({ stopFile: "/var/lib/pgo/web.stop" });
  const { call } = harness(svc);
  for (const cmd of ["up", "start", "restart", "rollback"]) {
    const r = await call(`web//${cmd}`);
    expect(r).toEqual({
      status: EX.unavailable, stdout: "",
      stderr: `Cannot ${cmd} "web": the stop file "/var/lib/pgo/web.stop" exists; the administrator must remove it first\n`,
    });
  }
  expect(svc.calls).toEqual([]);
  // Taking it down, or looking at it, still works.
  expect((await call("web//down")).status).toBe(0);
  expect((await call("web//ps")).status).toBe(0);
  expect(svc.calls).toEqual(["locked down --remove-orphans", "ps"]);
});

test("dispatch() writes no hold when stop or down fails, nor for a bad -t value", async () => {
  const failing = fakeService({ exitCode: 1 });
  const { call } = harness(failing);
  expect((await call("web//stop nosuchservice")).status).toBe(1);
  expect((await call("web//down")).status).toBe(1);
  expect(failing.hold()).toBeNull();
  const svc = fakeService();
  const h = harness(svc);
  for (const req of ["web//stop -t soon", "web//down --timeout=-1", "web//restart -t 1.5"]) {
    const r = await h.call(req);
    expect(r.status).toBe(EX.usage);
    expect(r.stderr).toContain("expected whole seconds");
  }
  expect(svc.hold()).toBeNull();
  expect(svc.calls).toEqual([]);
  expect((await h.call("web//stop -t 5")).status).toBe(0);
  expect(svc.hold()).toBe("stop");
});

test("dispatch() caps exec and logs -f per key and per service with exit 75, and frees a slot when one ends", async () => {
  const svc = fakeService();
  const gates: Array<() => void> = [];
  const started: string[] = [];
  const blocking: Compose = {
    async run(args) {
      started.push(args.join(" "));
      await new Promise<void>((r) => gates.push(r));
      return { exitCode: 0, signal: null, stdout: "", stderr: "", durationMs: 1, timedOut: false };
    },
    must: async () => ({ exitCode: 0, signal: null, stdout: "", stderr: "", durationMs: 1, timedOut: false }),
    services: async () => ["web"],
    withRegistries: (_r, fn) => fn(),
  };
  svc.handle.composeFor = async () => blocking;
  const keys = [KEY_A, KEY_B, { ...KEY_A, blob: Buffer.from("key-c"), fingerprint: "SHA256:c" }];
  const counted: string[] = [];
  const deps: RouterDeps = {
    services: new Map([["web", svc.handle]]),
    keysOf: async () => keys.map((k) => ({ algo: k.algo, blob: k.blob, comment: "" })),
    hostname: "box",
    logger: memoryLogger(),
    count: (c, r) => counted.push(`${c} ${r}`),
    longRunning: new LongRunning({ perService: 3, perKey: 2, waitMs: 0 }),
  };
  const call = (request: string, key: ClientKey) => {
    let stderr = "";
    const io: SessionIO = {
      stdout: { write: async () => {} },
      stderr: { write: async (c) => void (stderr += typeof c === "string" ? c : new TextDecoder().decode(c)) },
      signal: new AbortController().signal,
    };
    return dispatch(key, request, io, deps).then((status) => ({ status, stderr }));
  };
  const a1 = call("web//exec web sleep 1", KEY_A);
  const a2 = call("web//logs -f web", KEY_A);
  const a3 = await call("web//logs --follow", KEY_A);
  expect(a3).toEqual({ status: EXIT_TEMPFAIL, stderr: 'Cannot run "logs -f" for "web": this key runs 2 long-running commands ("exec", "logs -f"), the limit is 2\n' });
  // logs without -f and ps are not long-running: they are never capped.
  const plain = call("web//logs --tail 5", KEY_A);
  const b1 = call("web//exec web top", KEY_B);
  const b2 = await call("web//exec web top", KEY_B);
  expect(b2.status).toBe(EXIT_TEMPFAIL);
  expect(b2.stderr).toContain('run for this service, the limit is 3');
  expect(started).toEqual(["exec -T web sleep 1", "logs -f web", "logs --tail 5", "exec -T web top"]);
  expect(counted).toEqual(["logs unavailable", "exec unavailable"]);
  gates.shift()!(); // the first exec ends
  expect((await a1).status).toBe(0);
  const c1 = call("web//exec web true", keys[2]!);
  await new Promise((r) => setTimeout(r, 0));
  expect(started.at(-1)).toBe("exec -T web true");
  for (const g of gates.splice(0)) g();
  expect((await Promise.all([a2, plain, b1, c1])).map((r) => r.status)).toEqual([0, 0, 0, 0]);
  expect(deps.longRunning!.running("web")).toBe(0);
});

test("LongRunning.take() waits for a slot to free up, and refuses with 75 when none does in time or the client goes away", async () => {
  const lr = new LongRunning({ perService: 1, perKey: 1, waitMs: 60_000 });
  const first = await lr.take("web", "SHA256:a", "exec");
  let second: (() => void) | null = null;
  const waiting = lr.take("web", "SHA256:b", "exec").then((r) => (second = r));
  // One turn of the event loop: only first() or the 60 s wait can let it through, and neither has happened.
  await Bun.sleep(0);
  expect(second).toBeNull();
  first();
  await waiting;
  expect(second).not.toBeNull();
  expect(lr.running("web")).toBe(1);
  // Nothing frees up: refused after the wait.
  const short = new LongRunning({ perService: 1, perKey: 1, waitMs: 30 });
  await short.take("web", "SHA256:a", "exec");
  const t0 = Date.now();
  await expect(short.take("web", "SHA256:c", "logs -f")).rejects.toMatchObject({ status: EXIT_TEMPFAIL });
  expect(Date.now() - t0).toBeGreaterThanOrEqual(25);
  // The client goes away while it waits: refused at once.
  const ac = new AbortController();
  const gone = lr.take("web", "SHA256:d", "exec", ac.signal);
  ac.abort();
  await expect(gone).rejects.toMatchObject({ status: EXIT_TEMPFAIL });
  second!();
  expect(lr.running("web")).toBe(0);
});

test("formatStatus() shows why the newest commit did not verify, and no such line otherwise", () => {
  const base: ServiceStatus = {
    name: "web", commit: "a".repeat(40), deployedAt: null, lastResult: "unverified", lastError: null, stopFile: false,
    nextPollAt: null, lastPollAt: null, hold: null, pinned: null, good: null, bad: null,
  };
  const why = "unknown key: commit bbbbbbbbbbbb is signed by SHA256:x that is not in \"ssh/\" of the last verified commit aaaaaaaaaaaa";
  const lines = formatStatus({ ...base, unverified: why }, () => 0).split("\n");
  expect(lines).toContain(`unverified:  ${why} (not deployed; what runs keeps running)`);
  expect(lines).toContain("last result: unverified");
  expect(formatStatus(base, () => 0)).not.toContain("unverified:");
});
