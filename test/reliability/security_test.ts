/**
 * Security promises against the real pgod and Docker engine: a key of one service can do nothing
 * to another and cannot tell whether it exists; service users cannot read each other's files;
 * registry tokens and env values never show in logs, process lists, metrics or replies.
 * Run `bash scripts/build.sh` first.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { chown, mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  chownTree, composeFile, IMAGE, makeKey, metricsAddress, openssh, preflight, run, runningOf, scenario, sshListening,
  sweepRun, uniqueName, waitFor, waitRunning,
} from "../e2e/harness.ts";
import type { Client } from "../e2e/harness.ts";
import { freePort } from "../kit/process.ts";
import { keyWithText, sshRequest } from "./util.ts";
import type { Answer } from "./util.ts";

beforeAll(() => preflight());
afterAll(sweepRun);

/** Runs `argv` as `user` with exactly that user's groups. */
function asUser(user: string, argv: string[]): ReturnType<typeof run> {
  return run(["runuser", "-u", user, "--", ...argv], { check: false });
}

/** Every process's argv right now, as `ps -eww -o args` shows it (read from /proc). */
async function processArgs(): Promise<string[]> {
  const out: string[] = [];
  for (const pid of await readdir("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    const argv = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
    if (argv !== "") out.push(argv.split("\0").filter(Boolean).join(" "));
  }
  return out;
}

describe("security of pgod with a real Docker engine", () => {
  test.concurrent("a key of service A gets the same answer on service B as on a service that does not exist, for every command, and B is untouched", async () => {
    await scenario("cross-service", async (env) => {
      const keys = await env.tempDir(0o700);
      const [ka, kb] = await Promise.all([keyWithText(keys, "a"), keyWithText(keys, "b")]);
      const a = uniqueName("svca");
      const b = uniqueName("svcb");
      const [ra, rb] = await Promise.all([
        env.repo({ "compose.yaml": composeFile(), "ssh/a.pub": ka.pub }),
        env.repo({ "compose.yaml": composeFile(), "ssh/b.pub": kb.pub }),
      ]);
      await rb.commit({ "README": "second commit of B\n" }, "second");
      const pg = await env.pgod([{ name: a, repository: ra.bare }, { name: b, repository: rb.bare }], { args: ["-t", "10m"] });
      const { port } = await sshListening(pg);
      await pg.waitForLog(new RegExp(`msg=deployed service=(${a}|${b}) `), { count: 2 });
      const [containerB] = await runningOf(b);
      expect(containerB).toBeDefined();
      const asB = (cmd: string): Promise<Answer> => sshRequest(port, kb.text, `${b}//${cmd}`);
      const [statusB, historyB] = await Promise.all([asB("status"), asB("history")]);
      const since = pg.log().length;

      const missing = uniqueName("nosuch");
      const commands = [
        "up", "up web", "down", "down -v", "stop", "start", "restart", "pull", "ps", "ps -a", "logs", "logs --tail 5", "logs -f",
        "exec web true", "exec web sh -c 'touch /tmp/pwned'", "ping", "status", "check", "load", "history", "history 5",
        "rollback", "rollback abcd", "unpin", "sync", "frobnicate", "ping extra",
      ];
      const general = (r: Answer, service: string): unknown => ({
        code: r.code, stdout: r.stdout, stderr: r.stderr.replaceAll(service, "SERVICE"), error: r.error,
      });
      const mismatches: unknown[] = [];
      const timings: { other: number[]; missing: number[] } = { other: [], missing: [] };
      await Promise.all(commands.map(async (cmd) => {
        const [other, none] = await Promise.all([
          sshRequest(port, ka.text, `${b}//${cmd}`),
          sshRequest(port, ka.text, `${missing}//${cmd}`),
        ]);
        timings.other.push(other.ms);
        timings.missing.push(none.ms);
        const expected = { code: 77, stdout: "", stderr: `Permission denied: this key may not use service "SERVICE"\n`, error: undefined };
        for (const [what, r, svc] of [["B", other, b], ["missing", none, missing]] as const) {
          const got = general(r, svc);
          if (JSON.stringify(got) !== JSON.stringify(expected)) mismatches.push({ cmd, what, got });
        }
      }));
      expect(mismatches).toEqual([]);
      // The same through OpenSSH's client, for the commands that act.
      const asA: Client = { port, key: ka, knownHosts: "/dev/null" };
      for (const cmd of ["exec web true", "down", "logs --tail 5", "rollback", "history"]) {
        const [other, none] = await Promise.all([openssh(asA, `${b}//${cmd}`), openssh(asA, `${missing}//${cmd}`)]);
        expect({ cmd, code: other.code, stderr: other.stderr.replaceAll(b, "S") }).toEqual({ cmd, code: none.code, stderr: none.stderr.replaceAll(missing, "S") });
        expect(other.code).toBe(77);
      }
      const mean = (xs: number[]): number => Math.round(xs.reduce((x, y) => x + y, 0) / xs.length);
      console.log(`cross-service: ${commands.length} commands; mean reply ${mean(timings.other)} ms on B, ${mean(timings.missing)} ms on a missing service`);

      // Nothing ran for B: no compose command, same container, same status, same history.
      expect(pg.lines(new RegExp(`msg=exec argv="docker compose --project-name ${b} `), since)).toEqual([]);
      expect(pg.lines(new RegExp(`msg="request routed" service=${b} .*result=(ok|error)`), since)).toEqual([]);
      expect((await runningOf(b)).map((c) => c.id)).toEqual([containerB!.id]);
      const [statusAfter, historyAfter] = await Promise.all([asB("status"), asB("history")]);
      const stable = (s: string): string => s.replace(/^(last poll|next poll):.*$/gm, "");
      expect(stable(statusAfter.stdout)).toBe(stable(statusB.stdout));
      expect(statusAfter.stdout).toMatch(/^hold: +none$/m);
      expect(historyAfter.stdout).toBe(historyB.stdout);
    });
  }, 300_000);

  test.concurrent("a service's user cannot read another service's checkout, data directory, registry credentials or state", async () => {
    await scenario("file isolation", async (env) => {
      const [ua, ub] = await Promise.all([env.user(), env.user()]);
      const key = await makeKey(await env.tempDir(0o700), "team");
      const a = uniqueName("filea");
      const b = uniqueName("fileb");
      const [ra, rb] = await Promise.all([
        env.repo({ "compose.yaml": composeFile(), "ssh/team.pub": key.pub, "secret.txt": "A's committed file\n" }),
        env.repo({ "compose.yaml": composeFile(), "ssh/team.pub": key.pub }),
      ]);
      await Promise.all([chownTree(ra.bare, ua.uid, ua.gid), chownTree(rb.bare, ub.uid, ub.gid)]);
      const pg = await env.pgod([{ name: a, user: ua.name, repository: ra.bare }, { name: b, user: ub.name, repository: rb.bare }], { args: ["-t", "10m"] });
      await pg.waitForLog(new RegExp(`msg=deployed service=(${a}|${b}) `), { count: 2 });
      await Promise.all([waitRunning(a), waitRunning(b)]);
      const dir = pg.dir;
      const datadir = env.paths().datadir;
      // What a login leaves in DOCKER_CONFIG, and a file the service keeps in its data directory.
      const dockerConfig = join(dir, ".docker", a);
      await writeFile(join(dockerConfig, "config.json"), `{"auths":{"registry.example":{"auth":"${Buffer.from("bot:token").toString("base64")}"}}}\n`, { mode: 0o600 });
      await chown(join(dockerConfig, "config.json"), ua.uid, ua.gid);
      await mkdir(join(datadir, a, "db"), { recursive: true });
      await writeFile(join(datadir, a, "db", "data.txt"), "A's data\n", { mode: 0o644 });
      await chownTree(join(datadir, a, "db"), ua.uid, ua.gid);

      const files = [join(dir, a, "secret.txt"), join(dir, a, "compose.yaml"), join(datadir, a, "db", "data.txt"), join(dockerConfig, "config.json"),
        join(dir, ".state", a, "history"), join(dir, "ssh_host_ed25519_key")];
      const folders = [join(dir, a), join(datadir, a), dockerConfig, join(dir, ".state", a), join(dir, ".docker"), dir];
      // The owner can read its own files (so a refusal below is the permissions, not a wrong path).
      for (const f of files.slice(0, 4)) expect({ f, code: (await asUser(ua.name, ["cat", f])).code }).toEqual({ f, code: 0 });
      const denied: unknown[] = [];
      for (const f of files) {
        const r = await asUser(ub.name, ["cat", f]);
        if (r.code === 0 || !r.stderr.includes("Permission denied")) denied.push({ f, code: r.code, stderr: r.stderr.trim() });
      }
      for (const d of folders) {
        const r = await asUser(ub.name, ["ls", d]);
        if (r.code === 0 || !r.stderr.includes("Permission denied")) denied.push({ d, code: r.code, stderr: r.stderr.trim() });
      }
      for (const target of [join(dir, a, "planted"), join(datadir, a, "planted"), join(dockerConfig, "planted")]) {
        const r = await asUser(ub.name, ["touch", target]);
        if (r.code === 0 || existsSync(target)) denied.push({ target, code: r.code, stderr: r.stderr.trim() });
      }
      // The same with setpriv and B's groups taken from the group database.
      const sp = await run(["setpriv", `--reuid=${ub.uid}`, `--regid=${ub.gid}`, "--init-groups", "cat", join(dir, a, "secret.txt")], { check: false });
      if (sp.code === 0 || !sp.stderr.includes("Permission denied")) denied.push({ setpriv: sp });
      expect(denied).toEqual([]);
      // pgod's own children of B (compose, git) run with B's groups only: not root's, not A's.
      const ids = pg.lines(new RegExp(`msg=exec argv="docker compose --project-name ${b} [^"]*" cwd=\\S+ uid=${ub.uid} groups=(\\S+)`));
      expect(ids.length).toBeGreaterThan(0);
      for (const l of ids) {
        const groups = /groups=(\S+)/.exec(l)![1]!.split(",").map(Number);
        expect(groups).not.toContain(0);
        expect(groups).not.toContain(ua.gid);
      }
    });
  }, 300_000);

  test.concurrent("registry tokens, env values and repository credentials never appear in the debug log, process lists, /metrics or replies", async () => {
    await scenario("secrets", async (env) => {
      const user = await env.user();
      const tag = randomBytes(6).toString("hex");
      const regToken = `REGTOKEN-${tag}`;
      const envValue = `ENVSECRET-${tag}`;
      const envValue2 = `ENVSECRET2-${tag}`;
      const repoToken = `REPOTOKEN-${tag}`;
      const key = await makeKey(await env.tempDir(0o700), "team");
      const keyText = await readFile(key.file, "utf8");
      const failing = uniqueName("reglogin");
      const working = uniqueName("envsecret");
      const unreachable = uniqueName("repotoken");
      const compose = `services:
  web:
    image: ${IMAGE}
    pull_policy: never
    stop_signal: SIGKILL
    network_mode: none
    command: ["/bin/httpd", "-f", "-p", "8080"]
    environment:
      FROM_ENV: \${SECRET_VALUE}
`;
      const [rf, rw] = await Promise.all([
        env.repo({ "compose.yaml": compose, "ssh/team.pub": key.pub }),
        env.repo({ "compose.yaml": compose, "ssh/team.pub": key.pub }),
      ]);
      await chownTree(rf.bare, user.uid, user.gid);
      const port = freePort(); // nothing listens on it
      const pg = await env.pgod([
        {
          name: failing, user: user.name, repository: rf.bare,
          extra: `registries = ["bot:${regToken}@127.0.0.1:${port}"]\nenv = ["SECRET_VALUE=${envValue}", "PLAIN=1"]\n`,
        },
        { name: working, repository: rw.bare, extra: `env = ["SECRET_VALUE=${envValue2}"]\n` },
        { name: unreachable, repository: `http://tok:${repoToken}@127.0.0.1:${port}/x.git` },
      ], { args: ["-t", "3s"] });
      const sshPort = (await sshListening(pg)).port;
      const metrics = await metricsAddress(pg);

      // Sample every process's argv all along: /proc every 20 ms, and the real ps now and then.
      let sampling = true;
      const seen = new Set<string>();
      const psRuns: string[] = [];
      const sampler = (async () => {
        let n = 0;
        while (sampling) {
          for (const a of await processArgs()) seen.add(a);
          if (n++ % 25 === 0) psRuns.push((await run(["ps", "-eww", "-o", "args"], { check: false })).stdout);
          await Bun.sleep(20);
        }
      })();
      const replies: Answer[] = [];
      try {
        await pg.waitForLog(new RegExp(`msg=deployed service=${working} `));
        await pg.waitForLog(new RegExp(`msg="cycle failed" service=${failing} .*Cannot log in to registry`));
        await pg.waitForLog(new RegExp(`msg="cycle failed" service=${unreachable} `));
        const ask = async (svc: string, cmd: string): Promise<Answer> => {
          const r = await sshRequest(sshPort, keyText, `${svc}//${cmd}`);
          replies.push(r);
          return r;
        };
        const up = await ask(failing, "up");
        expect(up.code).not.toBe(0);
        expect(up.stderr).toContain(`Cannot log in to registry "127.0.0.1:${port}" as "bot"`);
        const pull = await ask(failing, "pull");
        expect(pull.stderr).toContain("Cannot log in to registry");
        for (const cmd of ["status", "check", "sync", "history", "ps"]) await ask(failing, cmd);
        for (const cmd of ["status", "up", "ps", "logs --tail 5", "exec web sh -c 'echo $FROM_ENV | wc -c'", "check"]) await ask(working, cmd);
        // The env value did reach the container (so it was really in play), as the compose file asked.
        const inContainer = await ask(working, `exec web sh -c 'echo "$FROM_ENV"'`);
        expect(inContainer.stdout).toBe(`${envValue2}\n`);
        replies.pop(); // that reply shows it by design
        await waitFor("a docker login of the failing service in a process list", () => [...seen].some((a) => a.includes(`--password-stdin 127.0.0.1:${port}`)), (x) => x, { timeoutMs: 30_000 });
      } finally {
        sampling = false;
        await sampler;
      }
      const metricsText = await (await fetch(`http://${metrics}/metrics`)).text();
      const everything = { log: pg.log(), processes: [...seen].join("\n"), ps: psRuns.join("\n"), metrics: metricsText, replies: JSON.stringify(replies) };
      const leaks: string[] = [];
      for (const [where, text] of Object.entries(everything)) {
        for (const secret of [regToken, envValue, envValue2]) if (text.includes(secret)) leaks.push(`${secret.split("-")[0]} in ${where}`);
      }
      for (const [where, text] of Object.entries(everything)) if (text.includes(repoToken)) leaks.push(`REPOTOKEN in ${where}`);
      expect(leaks).toEqual([]);
      // The sampling did see the deploys' processes, so the absence above means something.
      expect([...seen].some((a) => a.includes(`--project-name ${working}`))).toBe(true);
      expect([...seen].some((a) => a.includes(`--project-name ${failing}`))).toBe(true);
      // git was started for the remote with a token, without it in its argv (it gets it through its environment).
      const clones = [...seen].filter((a) => a.startsWith("git clone") && a.includes(`127.0.0.1:${port}/x.git`));
      expect(clones.length).toBeGreaterThan(0);
      expect(psRuns.length).toBeGreaterThan(2);
      console.log(`secrets: ${seen.size} distinct process argvs sampled, ${psRuns.length} ps runs, ${replies.length} replies; ` +
        `clones of the remote with a token seen: ${clones.length} (e.g. "${clones[0]!.slice(0, 120)}"), none holding the token`);
    });
  }, 300_000);
});
