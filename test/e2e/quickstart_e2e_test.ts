/**
 * examples/quickstart.sh as a newcomer runs it: it makes the demo's service user and a key in
 * the demo repository's ssh/ folder, runs pgod in the foreground, and prints a pgoctl command;
 * that command, run as printed, answers. The build is the one `bash scripts/build.sh` made
 * (PGO_QUICKSTART_PREBUILT=1), so the script does not rebuild dist/ under other tests' feet.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { statSync } from "node:fs";
import { join, resolve } from "node:path";
import { PGOCTL, preflight, randomId, RUN_PREFIX, run, scenario, sweepRun, uniqueName, waitFor, waitRunning } from "./harness.ts";
import { freePort } from "../kit/process.ts";

const ROOT = resolve(import.meta.dir, "../..");

beforeAll(() => preflight([join(ROOT, "dist", "pgod"), PGOCTL]));
afterAll(sweepRun);

test("the quickstart runs the demo as a new non-root service user, and the pgoctl command it prints answers ping and ps", async () => {
  await scenario("quickstart", async (env) => {
    const q = await env.tempDir(0o755);
    const name = env.project(uniqueName("quick"));
    const user = `pgo-${RUN_PREFIX}${randomId(3)}`.slice(0, 31);
    env.defer(async () => void (await run(["userdel", user], { check: false })));
    const [sshPort, metricsPort] = [await freePort(), await freePort()];
    const proc = Bun.spawn(["bash", join(ROOT, "examples", "quickstart.sh")], {
      cwd: "/",
      env: {
        ...process.env,
        PGO_QUICKSTART_DIR: q,
        PGO_QUICKSTART_USER: user,
        PGO_QUICKSTART_NAME: name,
        PGO_QUICKSTART_PREBUILT: "1",
        PGO_QUICKSTART_SSH: `127.0.0.1:${sshPort}`,
        PGO_QUICKSTART_METRICS: `127.0.0.1:${metricsPort}`,
      },
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
    });
    let stderr = "";
    void (async () => {
      for await (const chunk of proc.stderr) stderr += new TextDecoder().decode(chunk);
    })();
    void new Response(proc.stdout).text();
    env.defer(async () => {
      proc.kill("SIGTERM");
      await Promise.race([proc.exited, Bun.sleep(40_000)]);
      proc.kill("SIGKILL");
    });
    try {
      const line = await waitFor("the printed pgoctl command", async () => /quickstart: operate it: +(.*)$/m.exec(stderr)?.[1], (m) => m !== undefined, {
        timeoutMs: 60_000,
      });
      const argv = line!.trim().split(/ +/);
      expect(argv[0]).toBe(PGOCTL);
      expect(argv.at(-1)).toBe(`127.0.0.1:${name}//ps`);
      // The service user exists, is not root, and owns the checkout pgod made.
      const uid = Number((await run(["id", "-u", user])).stdout.trim());
      expect(uid).toBeGreaterThan(0);
      const container = await waitRunning(name, { timeoutMs: 120_000 });
      expect(container.state).toBe("running");
      expect(statSync(join(q, "dir", name)).uid).toBe(uid);
      const t0 = performance.now();
      const ping = await waitFor(
        "the printed command to answer ping",
        () => run([...argv.slice(0, -1), `127.0.0.1:${name}//ping`], { check: false }),
        (r) => r.code === 0,
        { timeoutMs: 60_000, intervalMs: 500 },
      );
      console.log(`quickstart: ping answered ${Math.round(performance.now() - t0)} ms after the container ran: ${ping.stdout.trim()}`);
      expect(ping.stdout).toMatch(/^pong /);
      const ps = await run(argv, { check: false });
      expect({ code: ps.code, stderr: ps.stderr.replace(/^pgoctl: .*known_hosts.*\n/gm, "") }).toEqual({ code: 0, stderr: "" });
      expect(ps.stdout).toContain(name);
    } catch (e) {
      console.error(`----- quickstart stderr -----\n${stderr}\n-----`);
      throw e;
    }
    expect(proc.exitCode).toBeNull(); // pgod still runs in the foreground
  });
}, 300_000);
