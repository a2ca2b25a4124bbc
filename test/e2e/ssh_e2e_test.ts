/**
 * pgod's SSH interface and metrics against the real Docker engine: each test starts `dist/pgod`
 * with its own dirs, config and git remote (whose `ssh/` folder holds the client keys), and talks
 * to it with `dist/pgoctl` and with OpenSSH's `ssh`. Tests share no state and run concurrently.
 * Run `bash scripts/build.sh` first.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, statSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { hostname, userInfo } from "node:os";
import { join } from "node:path";
import {
  composeExec, composeFile, configText, containersOf, Env, fingerprintOf, headOf, IMAGE, lsRemote, makeKey,
  metricsAddress, openssh, PGOCTL, pgoctl, PGOD, Pgod, preflight, processesWith, QUIET_INTERVAL, randomId, Repo,
  run, runningOf, scenario, sshListening, sweepRun, uniqueName, waitFor, waitRunning,
} from "./harness.ts";
import type { Client, Key, Ran } from "./harness.ts";

/** One service served by its own pgod, with a client key committed in its repository. */
interface Served extends Client {
  name: string;
  repo: Repo;
  pg: Pgod & { dir: string; config: string };
  hostKey: string;
}

/**
 * Starts pgod with one service whose repository holds `compose` and `ssh/<tag>.pub`, and waits
 * until the first deploy is done (the checkout exists, so the key is known). Unless the test
 * needs pgod to follow the remote (`polls`), there is no cycle after the first one: a dozen
 * pgods polling every 2 s cost these two cores more than the tests themselves.
 */
async function serve(env: Env, tag: string, o: { compose?: string; polls?: boolean } = {}): Promise<Served> {
  const name = uniqueName(tag);
  const key = await makeKey(await env.tempDir(0o700), tag);
  const repo = await env.repo({ "compose.yaml": o.compose ?? composeFile(), [`ssh/${tag}.pub`]: key.pub });
  const pg = await env.pgod([{ name, repository: repo.bare }], o.polls ? {} : { args: ["-t", QUIET_INTERVAL] });
  const { port, hostKey } = await sshListening(pg);
  await pg.waitForLog(new RegExp(`msg=deployed service=${name} `));
  return { name, repo, pg, key, port, hostKey, knownHosts: join(env.root, "known_hosts") };
}

/** Reads a stream line by line, noting when each line arrived and in which read it came. */
class LineReader {
  readonly lines: Array<{ text: string; at: number; read: number }> = [];
  private readonly reader: { read(): Promise<{ done: boolean; value?: Uint8Array }>; releaseLock(): void };
  private readonly decoder = new TextDecoder();
  private pending: Promise<{ done: boolean; value?: Uint8Array }> | null = null;
  private partial = "";
  private reads = 0;
  private ended = false;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.reader = stream.getReader();
  }

  /** Reads until `ok(lines)` holds; throws after `ms` or at the end of the stream. */
  async until(what: string, ok: (lines: LineReader["lines"]) => boolean, ms = 20_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!ok(this.lines)) {
      if (this.ended) throw new Error(`Output ended before ${what}; lines: ${JSON.stringify(this.lines)}`);
      // A read that lost the race against the timer is kept for the next call.
      this.pending ??= this.reader.read();
      const next = await Promise.race([this.pending, Bun.sleep(Math.max(0, deadline - Date.now())).then(() => null)]);
      if (next === null) throw new Error(`Timed out after ${ms} ms waiting for ${what}; lines: ${JSON.stringify(this.lines)}`);
      this.pending = null;
      if (next.done) {
        this.ended = true;
        continue;
      }
      const at = performance.now();
      this.reads++;
      const parts = (this.partial + this.decoder.decode(next.value, { stream: true })).split("\n");
      this.partial = parts.pop()!;
      for (const text of parts) this.lines.push({ text, at, read: this.reads });
    }
  }

  /** Lets go of the stream (a read still waiting then fails, quietly). */
  release(): void {
    this.pending?.catch(() => {});
    this.reader.releaseLock();
  }
}

/** The value of the sample `name{labels}` in Prometheus text, or undefined (labels match in any order). */
function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = new Map([...(m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1]!, x[2]!]));
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) return Number(m[3]);
  }
  return undefined;
}

beforeAll(() => preflight([PGOD, PGOCTL]));
afterAll(sweepRun);

describe("the SSH interface of pgod with a real Docker engine", () => {
  test.concurrent("ps lists the running container through pgoctl and through OpenSSH's ssh", async () => {
    await scenario("ps", async (env) => {
      const s = await serve(env, "ps");
      await waitRunning(s.name);

      const [ctl, ssh] = await Promise.all([pgoctl(s, `${s.name}//ps`), openssh(s, `${s.name}//ps`)]);
      for (const r of [ctl, ssh]) {
        expect({ code: r.code, stderr: r.stderr.replace(/^pgoctl: Trusting .*\n/, "") }).toEqual({ code: 0, stderr: "" });
        expect(r.stdout).toMatch(/^NAME\s+IMAGE\s+COMMAND\s+SERVICE\s+CREATED\s+STATUS/);
        expect(r.stdout).toMatch(new RegExp(`^${s.name}-web-1\\s+${IMAGE.replace(".", "\\.")}\\s.*\\bweb\\b.*\\bUp\\b`, "m"));
      }
    });
  });

  test.concurrent("logs -f streams lines as they come and leaves no docker compose logs behind when the client goes away", async () => {
    await scenario("logs -f", async (env) => {
      const s = await serve(env, "logs", {
        // `$$` keeps compose from interpolating the shell's variables.
        compose: composeFile({ command: ["/bin/sh", "-c", "i=0; while :; do i=$$((i+1)); echo tick $$i; sleep 0.3; done"] }),
      });
      await waitRunning(s.name);

      const proc = Bun.spawn(
        [PGOCTL, "-i", s.key.file, "-p", String(s.port), "--known-hosts", s.knownHosts, `127.0.0.1:${s.name}//logs`, "--tail", "1", "-f"],
        { cwd: "/", stdin: "ignore", stdout: "pipe", stderr: "pipe" },
      );
      const out = new LineReader(proc.stdout);
      try {
        const ticks = (ls: LineReader["lines"]): LineReader["lines"] => ls.filter((l) => /\| tick \d+$/.test(l.text));
        // Three lines, the last of them in a later read than the first and at least 0.25 s later.
        await out.until("tick lines arriving over time", (ls) => {
          const t = ticks(ls);
          return t.length >= 3 && t.at(-1)!.read > t[0]!.read && t.at(-1)!.at - t[0]!.at >= 250;
        });
        expect(proc.exitCode).toBeNull();
        const t = ticks(out.lines);
        const numbers = t.map((l) => Number(/tick (\d+)$/.exec(l.text)![1]));
        for (let i = 1; i < numbers.length; i++) expect(numbers[i]).toBe(numbers[i - 1]! + 1);
        expect(new Set(t.map((l) => l.read)).size).toBeGreaterThanOrEqual(2);

        const following = await processesWith(["--project-name", s.name, "logs"]);
        expect(following.length).toBeGreaterThanOrEqual(1);
      } finally {
        out.release();
        proc.kill("SIGKILL");
        await proc.exited;
      }
      expect(proc.signalCode).toBe("SIGKILL");
      await waitFor(
        "no docker compose logs process of the project",
        () => processesWith(["--project-name", s.name, "logs"]),
        (ps) => ps.length === 0,
        { timeoutMs: 10_000 },
      );
      const [done] = await s.pg.waitForLog(new RegExp(`msg="SSH request" request=${s.name}//logs .*client_gone=true`));
      expect(done).toContain(`key=${s.key.fingerprint}`);
      // The service itself still runs.
      expect((await runningOf(s.name)).length).toBe(1);
    });
  });

  test.concurrent("exec passes the command's exit code through pgoctl and through ssh", async () => {
    await scenario("exec status", async (env) => {
      const s = await serve(env, "exec");
      await waitRunning(s.name);
      const [ctl, ssh, ok] = await Promise.all([
        pgoctl(s, `${s.name}//exec`, "web", "sh", "-c", "exit 42"),
        openssh(s, `${s.name}//exec web sh -c 'exit 42'`),
        openssh(s, `${s.name}//exec web true`),
      ]);
      expect({ code: ctl.code, stdout: ctl.stdout, stderr: ctl.stderr.replace(/^pgoctl: Trusting .*\n/, "") }).toEqual({
        code: 42, stdout: "", stderr: "",
      });
      expect(ssh).toEqual({ code: 42, stdout: "", stderr: "" });
      expect(ok).toEqual({ code: 0, stdout: "", stderr: "" });
    });
  });

  test.concurrent("exec keeps stdout and stderr apart and passes arguments with spaces and quotes intact", async () => {
    await scenario("exec streams", async (env) => {
      const s = await serve(env, "execargs");
      await waitRunning(s.name);
      const script = `printf '[%s]' "$@"; echo; echo to-stderr >&2; exit 3`;
      const args = ["a  b", "it's", '"quoted"', "$HOME", "", "x;y|z", "tab\there"];
      const [echo, ctl, ssh] = await Promise.all([
        pgoctl(s, `${s.name}//exec`, "web", "sh", "-c", `echo "a  b"`),
        pgoctl(s, `${s.name}//exec`, "web", "sh", "-c", script, "sh", ...args),
        openssh(s, `${s.name}//exec web sh -c 'echo out; echo err >&2'`),
      ]);
      const clean = (r: Ran): Ran => ({ ...r, stderr: r.stderr.replace(/^pgoctl: Trusting .*\n/, "") });
      expect(clean(echo)).toEqual({ code: 0, stdout: "a  b\n", stderr: "" });
      expect(clean(ctl)).toEqual({ code: 3, stdout: `${args.map((a) => `[${a}]`).join("")}\n`, stderr: "to-stderr\n" });
      expect(ssh).toEqual({ code: 0, stdout: "out\n", stderr: "err\n" });
    });
  });

  test.concurrent("down holds the service down across poll cycles, status shows the hold, and up brings it back", async () => {
    await scenario("down hold", async (env) => {
      const s = await serve(env, "hold", { polls: true });
      const before = await waitRunning(s.name);

      const down = await pgoctl(s, `${s.name}//down`);
      expect(down.code).toBe(0);
      expect(down.stdout).toBe("");
      expect(down.stderr).toContain(`${s.name}-web-1`);
      expect(await containersOf(s.name)).toEqual([]);
      // Two more reconcile cycles: neither self-healing nor anything else brings it back.
      const since = s.pg.log().length;
      await s.pg.waitForLog(lsRemote(s.pg.dir, s.name), { since, count: 2 });
      expect(await containersOf(s.name)).toEqual([]);
      expect(s.pg.lines(composeExec(s.name, "up"), since)).toEqual([]);

      const held = await pgoctl(s, `${s.name}//status`);
      expect({ code: held.code, stderr: held.stderr }).toEqual({ code: 0, stderr: "" });
      expect(held.stdout).toContain(`service:     ${s.name}\n`);
      expect(held.stdout).toMatch(/^hold: +down \(through pgoctl/m);
      expect(held.stdout).toMatch(new RegExp(`^commit: +${await headOf(join(s.pg.dir, s.name))}$`, "m"));

      const up = await pgoctl(s, `${s.name}//up`);
      expect({ code: up.code, stdout: up.stdout }).toEqual({ code: 0, stdout: "" });
      const after = await waitRunning(s.name);
      expect(after.id).not.toBe(before.id);
      const released = await pgoctl(s, `${s.name}//status`);
      expect({ code: released.code, stderr: released.stderr }).toEqual({ code: 0, stderr: "" });
      expect(released.stdout).toMatch(/^hold: +none$/m);
    });
  });

  test.concurrent("a key of service A gets the same refusal on service B as on a service that does not exist", async () => {
    await scenario("key of another service", async (env) => {
      const keys = await env.tempDir(0o700);
      const [ka, kb] = await Promise.all([makeKey(keys, "a"), makeKey(keys, "b")]);
      const a = uniqueName("svca");
      const b = uniqueName("svcb");
      const [ra, rb] = await Promise.all([
        env.repo({ "compose.yaml": composeFile(), "ssh/a.pub": ka.pub }),
        env.repo({ "compose.yaml": composeFile(), "ssh/b.pub": kb.pub }),
      ]);
      const pg = await env.pgod([{ name: a, repository: ra.bare }, { name: b, repository: rb.bare }], { args: ["-t", QUIET_INTERVAL] });
      const { port } = await sshListening(pg);
      await pg.waitForLog(new RegExp(`msg=deployed service=(${a}|${b}) `), { count: 2 });
      const asA: Client = { port, key: ka, knownHosts: join(env.root, "known_hosts") };
      const asB: Client = { ...asA, key: kb };
      // Written first, so the note about trusting the host key is not part of any answer below.
      expect((await pgoctl(asA, `${a}//ping`)).code).toBe(0);

      const missing = uniqueName("nosuch");
      const [own, other, unknown, sshOther, sshUnknown] = await Promise.all([
        pgoctl(asB, `${b}//ping`),
        pgoctl(asA, `${b}//ps`),
        pgoctl(asA, `${missing}//ps`),
        openssh(asA, `${b}//ps`),
        openssh(asA, `${missing}//ps`),
      ]);
      expect(own).toEqual({ code: 0, stdout: `pong ${hostname()}\n`, stderr: "" });
      const expected = { code: 77, stdout: "", stderr: `Permission denied: this key may not use service "SERVICE"\n` };
      const general = (r: Ran, service: string): Ran => ({ ...r, stderr: r.stderr.replaceAll(service, "SERVICE") });
      expect(general(other, b)).toEqual(expected);
      expect(general(unknown, missing)).toEqual(expected);
      expect(general(sshOther, b)).toEqual(expected);
      expect(general(sshUnknown, missing)).toEqual(expected);
      expect(pg.lines(composeExec(b, "ps"))).toEqual([]);
    });
  });

  test.concurrent("a request with shell syntax after the command runs nothing extra and exits 64", async () => {
    await scenario("injection", async (env) => {
      const s = await serve(env, "inject");
      const marker = `/tmp/x-${randomId(10)}`;
      const requests = [
        `${s.name}//ps; touch ${marker}-1`,
        `${s.name}//ps && touch ${marker}-2`,
        `${s.name}//ps | touch ${marker}-3`,
        `${s.name}//ps $(touch ${marker}-4)`,
        `${s.name}//ps \`touch ${marker}-5\``,
        `${s.name}//ps\ntouch ${marker}-6`,
      ];
      const answers = await Promise.all(requests.map((r) => openssh(s, r)));
      for (const [i, r] of answers.entries()) {
        expect({ request: requests[i], code: r.code, stdout: r.stdout }).toEqual({ request: requests[i], code: 64, stdout: "" });
        expect(r.stderr).toMatch(/^(Unknown command "ps;"|Invalid argument ".*" for "ps": expected a compose service name)/);
      }
      expect(answers[0]!.stderr).toStartWith(`Unknown command "ps;": expected one of up, down,`);
      for (let i = 1; i <= requests.length; i++) expect(existsSync(`${marker}-${i}`)).toBe(false);
      // Not even the `ps` before the shell syntax ran.
      expect(s.pg.lines(composeExec(s.name, "ps"))).toEqual([]);
      expect(s.pg.lines(/msg=exec argv="touch /)).toEqual([]);
    });
  });

  test.concurrent("a key added by a commit works after the next pull and a key removed by a commit stops working", async () => {
    await scenario("keys follow the repository", async (env) => {
      const s = await serve(env, "first", { polls: true });
      const added = await makeKey(await env.tempDir(0o700), "added");
      const asAdded: Client = { ...s, key: added };
      const pong = { code: 0, stdout: `pong ${hostname()}\n`, stderr: "" };
      const user = process.env["USER"] || process.env["LOGNAME"] || userInfo().username;
      const refused = (k: Key): string =>
        `pgoctl: Cannot log in to "127.0.0.1:${s.port}" as "${user}": the server does not accept key ${k.fingerprint}\n`;
      expect((await pgoctl(s, `${s.name}//ping`)).code).toBe(0); // records the host key

      expect(await pgoctl(asAdded, `${s.name}//ping`)).toEqual({ code: 255, stdout: "", stderr: refused(added) });

      const checkout = join(s.pg.dir, s.name);
      const withAdded = await s.repo.commit({ "ssh/added.pub": added.pub }, "add a key");
      await waitFor("the checkout at the commit that adds a key", () => headOf(checkout), (h) => h === withAdded);
      expect(await pgoctl(asAdded, `${s.name}//ping`)).toEqual(pong);
      expect(await pgoctl(s, `${s.name}//ping`)).toEqual(pong);

      const withoutFirst = await s.repo.commit({ "ssh/first.pub": null }, "remove the first key");
      await waitFor("the checkout at the commit that removes a key", () => headOf(checkout), (h) => h === withoutFirst);
      expect(await pgoctl(s, `${s.name}//ping`)).toEqual({ code: 255, stdout: "", stderr: refused(s.key) });
      expect(await openssh(s, `${s.name}//ping`)).toMatchObject({ code: 255, stdout: "" });
      expect(await pgoctl(asAdded, `${s.name}//ping`)).toEqual(pong);
      // No restart was needed.
      expect(s.pg.exitCode).toBeNull();
    });
  });

  test.concurrent("pgoctl trusts a new host key on first use and refuses a changed one with exit 255", async () => {
    await scenario("host key changed", async (env) => {
      const s = await serve(env, "hostkey");
      const where = `[127.0.0.1]:${s.port}`;

      const first = await pgoctl(s, `${s.name}//ping`);
      expect(first).toEqual({
        code: 0,
        stdout: `pong ${hostname()}\n`,
        stderr: `pgoctl: Trusting "${where}" on first use: added its ssh-ed25519 key ${s.hostKey} to "${s.knownHosts}"\n`,
      });
      const recorded = await readFile(s.knownHosts, "utf8");
      expect(recorded).toMatch(new RegExp(`^\\[127\\.0\\.0\\.1\\]:${s.port} ssh-ed25519 AAAA\\S+\n$`));
      expect(await pgoctl(s, `${s.name}//ping`)).toEqual({ code: 0, stdout: `pong ${hostname()}\n`, stderr: "" });

      // Another pgod (another --dir, so another host key) on the same port. Its service has no
      // repository: no login can succeed there, and the host key check comes before the login.
      expect(await s.pg.signal("SIGTERM")).toBe(0);
      const root = await env.tempDir();
      const config = join(root, "other.toml");
      await writeFile(config, configText([{ name: uniqueName("other"), repository: join(root, "missing.git") }]));
      const other = Pgod.start({
        config, dir: join(root, "dir"), datadir: join(root, "data"), logFile: join(root, "other.log"),
        args: ["-t", QUIET_INTERVAL, "-s", `127.0.0.1:${s.port}`],
      });
      env.pgods.push(other);
      const moved = await sshListening(other);
      expect(moved.port).toBe(s.port);
      expect(moved.hostKey).not.toBe(s.hostKey);

      const r = await pgoctl(s, `${s.name}//ping`);
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 255, stdout: "" });
      expect(r.stderr).toStartWith(`pgoctl: Host key of "${where}" has changed: it now offers ssh-ed25519 key ${moved.hostKey}, `);
      expect(r.stderr).toContain(`"${s.knownHosts}" line 1 holds another key`);
      expect(r.stderr.split("\n").filter(Boolean)).toHaveLength(1);
      expect(await readFile(s.knownHosts, "utf8")).toBe(recorded);
      expect(other.lines(/msg="SSH request"/)).toEqual([]);
    });
  });

  test.concurrent("the host key persists across a pgod restart with the same --dir", async () => {
    await scenario("host key kept", async (env) => {
      const s = await serve(env, "keep");
      const keyFile = join(s.pg.dir, "ssh_host_ed25519_key");
      expect(s.pg.lines(/msg="Created SSH host key"/)).toHaveLength(1);
      expect(statSync(keyFile).mode & 0o777).toBe(0o600);
      expect(await fingerprintOf(keyFile)).toBe(s.hostKey);
      expect((await pgoctl(s, `${s.name}//ping`)).stderr).toContain("on first use");

      expect(await s.pg.signal("SIGTERM")).toBe(0);
      const again = await env.pgod([{ name: s.name, repository: s.repo.bare }], {
        tag: "again",
        args: ["-t", QUIET_INTERVAL, "-s", `127.0.0.1:${s.port}`],
      });
      const seen = await sshListening(again);
      expect(seen).toEqual({ port: s.port, hostKey: s.hostKey });
      expect(again.lines(/msg="Created SSH host key"/)).toEqual([]);
      expect(statSync(keyFile).mode & 0o777).toBe(0o600);
      await again.waitForLog(new RegExp(`msg=deployed service=${s.name} `));
      // The client that trusted the first pgod trusts the restarted one without a word.
      expect(await pgoctl(s, `${s.name}//ping`)).toEqual({ code: 0, stdout: `pong ${hostname()}\n`, stderr: "" });
    });
  });

  test.concurrent("a live /metrics passes promtool check metrics but for the two names kept from the original, and /healthz is 200", async () => {
    await scenario("metrics", async (env) => {
      const s = await serve(env, "metrics");
      const address = await metricsAddress(s.pg);
      await waitRunning(s.name);
      const [ping, ps, bad] = await Promise.all([
        pgoctl(s, `${s.name}//ping`),
        pgoctl(s, `${s.name}//ps`),
        pgoctl(s, `${s.name}//frobnicate`),
      ]);
      expect([ping.code, ps.code, bad.code]).toEqual([0, 0, 64]);

      const res = await fetch(`http://${address}/metrics`);
      expect(res.status).toBe(200);
      expect(res.headers.get("content-type")).toStartWith("text/plain");
      const text = await res.text();
      expect(sample(text, "pgo_ssh_requests_total", { command: "ping", result: "ok" })).toBe(1);
      expect(sample(text, "pgo_ssh_requests_total", { command: "ps", result: "ok" })).toBe(1);
      expect(sample(text, "pgo_ssh_requests_total", { command: "unknown", result: "malformed" })).toBe(1);
      expect(sample(text, "pgo_command_count", { service: s.name, cmd: "compose", subcmd: "ps" })).toBe(1);
      expect(sample(text, "pgo_command_count", { service: s.name, cmd: "compose", subcmd: "up" })).toBeGreaterThanOrEqual(1);
      expect(sample(text, "pgo_deploys_total", { service: s.name, result: "deployed" })).toBe(1);
      expect(sample(text, "pgo_service_up", { service: s.name })).toBe(1);
      expect(sample(text, "process_cpu_user_seconds_total", {})).toBeGreaterThan(0);

      const file = join(env.root, "metrics.txt");
      await writeFile(file, text);
      const lint = await run(["sh", "-c", `promtool check metrics < "${file}"`], { check: false });
      const findings = `${lint.stdout}${lint.stderr}`.split("\n").map((l) => l.trim()).filter(Boolean);
      const allowed = [
        'pgo_command_count counter metrics should have "_total" suffix',
        'pgo_command_count non-histogram and non-summary metrics should not have "_count" suffix',
        'pgo_command_error_count counter metrics should have "_total" suffix',
        'pgo_command_error_count non-histogram and non-summary metrics should not have "_count" suffix',
      ];
      expect(findings.filter((f) => !allowed.includes(f))).toEqual([]);
      // promtool exits 3 for lint findings only; any other status is a failure of its own.
      expect(lint.code).toBe(findings.length > 0 ? 3 : 0);

      const health = await fetch(`http://${address}/healthz`);
      expect({ status: health.status, body: await health.text() }).toEqual({ status: 200, body: "ok\n" });
    });
  });

  test.concurrent("ping answers pong and the hostname, an unknown command gives 64 and a request of 5000 bytes gives 64", async () => {
    await scenario("ping", async (env) => {
      const s = await serve(env, "ping");
      const first = await pgoctl(s, `${s.name}//ping`);
      expect({ code: first.code, stdout: first.stdout }).toEqual({ code: 0, stdout: `pong ${hostname()}\n` });

      const head = `${s.name}//ping `;
      const long = head + "x".repeat(5000 - head.length);
      expect(Buffer.byteLength(long)).toBe(5000);
      const [ping, sshPing, unknown, sshUnknown, tooLong, sshTooLong, pingArgs] = await Promise.all([
        pgoctl(s, `${s.name}//ping`),
        openssh(s, `${s.name}//ping`),
        pgoctl(s, `${s.name}//frobnicate`),
        openssh(s, `${s.name}//frobnicate now`),
        pgoctl(s, `${s.name}//ping`, "x".repeat(5000 - head.length)),
        openssh(s, long),
        pgoctl(s, `${s.name}//ping`, "extra"),
      ]);
      expect(ping).toEqual({ code: 0, stdout: `pong ${hostname()}\n`, stderr: "" });
      expect(sshPing).toEqual(ping);
      const unknownAnswer = {
        code: 64,
        stdout: "",
        stderr: 'Unknown command "frobnicate": expected one of up, down, stop, start, restart, pull, ps, logs, exec, ping, status, check, history, rollback, unpin, sync, recipient\n',
      };
      expect(unknown).toEqual(unknownAnswer);
      expect(sshUnknown).toEqual(unknownAnswer);
      const tooLongAnswer = { code: 64, stdout: "", stderr: "Request too long: 5000 bytes, the limit is 4096\n" };
      expect(tooLong).toEqual(tooLongAnswer);
      expect(sshTooLong).toEqual(tooLongAnswer);
      expect(pingArgs).toEqual({ code: 64, stdout: "", stderr: 'Command "ping" takes no arguments\n' });
      expect(s.pg.exitCode).toBeNull();
    });
  });
  test.concurrent("a key past its 8 long-running commands waits for a slot, gets one when a client goes away, and 75 when none frees up", async () => {
    await scenario("long-running cap", async (env) => {
      const s = await serve(env, "cap");
      await waitRunning(s.name);
      expect((await pgoctl(s, `${s.name}//ping`)).code).toBe(0); // records the host key once
      const follow = (): ReturnType<typeof Bun.spawn> =>
        Bun.spawn([PGOCTL, "-i", s.key.file, "-p", String(s.port), "--known-hosts", s.knownHosts, `127.0.0.1:${s.name}//logs`, "-f"], {
          cwd: "/", stdin: "ignore", stdout: "ignore", stderr: "ignore",
        });
      const children = (): Promise<string[]> => processesWith(["--project-name", s.name, "logs"]);
      const clients = Array.from({ length: 8 }, follow);
      try {
        await waitFor("eight docker compose logs -f", children, (ps) => ps.length === 8, { timeoutMs: 90_000 });
        // Short commands are not capped.
        expect((await pgoctl(s, `${s.name}//ps`)).code).toBe(0);
        // A ninth waits; when a client goes away, it gets that slot.
        const t0 = performance.now();
        const ninth = pgoctl(s, `${s.name}//exec`, "web", "true");
        await s.pg.waitForLog(new RegExp(`msg="waiting for a slot for a long-running command" service=${s.name} command=exec `), { timeoutMs: 60_000 });
        clients[0]!.kill("SIGTERM");
        expect(await ninth).toEqual({ code: 0, stdout: "", stderr: "" });
        const waited = performance.now() - t0;
        // Eight run again (the ninth's slot is free, a new follower takes it); one more is refused after 10 s.
        clients[0] = follow();
        await waitFor("eight docker compose logs -f again", children, (ps) => ps.length === 8, { timeoutMs: 60_000 });
        const t1 = performance.now();
        const refused = await pgoctl(s, `${s.name}//exec`, "web", "true");
        const refusedAfter = performance.now() - t1;
        console.log(`long-running cap: the ninth exec waited ${Math.round(waited)} ms for a slot; one more was refused after ${Math.round(refusedAfter)} ms`);
        expect(refused).toEqual({
          code: 75,
          stdout: "",
          stderr: `Cannot run "exec" for "${s.name}": this key runs 8 long-running commands ("exec", "logs -f"), the limit is 8 (none ended within 10 s)\n`,
        });
        expect(refusedAfter).toBeGreaterThanOrEqual(9_500);
      } finally {
        for (const c of clients) c.kill("SIGTERM");
      }
      await waitFor("no docker compose logs left", children, (ps) => ps.length === 0, { timeoutMs: 30_000 });
    });
  });
});
