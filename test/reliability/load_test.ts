/**
 * Load: 50 concurrent clients, each opening a new SSH connection per request, for a minute of
 * mixed commands against a real pgod and Docker engine. No request may fail, and pgod's memory
 * must come back to its idle level afterwards. The clients run in this process (ssh2), as
 * DECISIONS.md #11 asks for throughput measurements on these 2-core machines. They use ten keys,
 * five clients each, as ten people or jobs would: one key may run only 8 `exec`s at once (see
 * pgod(8)), and the mix's `exec`s of 50 clients on one key would wait for each other.
 * Run `bash scripts/build.sh` first.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { preflight, scenario, sweepRun, waitFor, waitRunning } from "../e2e/harness.ts";
import { cpuTimes } from "../kit/process.ts";
import { keyWithText, percentile, RssSampler, rssMiB, serveOne, settleRss, sshRequest } from "./util.ts";
import type { Answer } from "./util.ts";

const CLIENTS = Number(process.env["PGO_LOAD_CLIENTS"] ?? 50);
const DURATION_MS = Number(process.env["PGO_LOAD_SECONDS"] ?? 60) * 1000;
/** Keys the clients share (client i uses key i mod KEYS). */
const KEYS = 10;

beforeAll(() => preflight());
afterAll(sweepRun);

/** The mix of commands, with a weight each and what a good answer looks like. */
function mix(name: string): Array<{ cmd: string; weight: number; ok: (a: Answer) => boolean }> {
  return [
    { cmd: "ping", weight: 25, ok: (a) => a.code === 0 && a.stdout.startsWith("pong ") },
    { cmd: "status", weight: 20, ok: (a) => a.code === 0 && a.stdout.startsWith(`service:     ${name}\n`) },
    { cmd: "history", weight: 15, ok: (a) => a.code === 0 && a.stdout.includes("deployed") },
    { cmd: "ps", weight: 14, ok: (a) => a.code === 0 && a.stdout.includes(`${name}-web-1`) },
    { cmd: "logs --tail 5", weight: 13, ok: (a) => a.code === 0 },
    { cmd: "exec web true", weight: 13, ok: (a) => a.code === 0 && a.stdout === "" },
  ];
}

/** How many of the clients may run `exec` (a long-running command, capped per service). */
const EXEC_CLIENTS = 12;

describe("pgod under load", () => {
  test(`${CLIENTS} concurrent clients with a new connection per request for ${DURATION_MS / 1000} s of mixed commands: no request fails and memory returns to its idle level`, async () => {
    await scenario("load", async (env) => {
      const keyDir = await env.tempDir(0o700);
      const keys = await Promise.all(Array.from({ length: KEYS }, (_, i) => keyWithText(keyDir, `load${i}`)));
      const s = await serveOne(env, "load", { interval: "10m", files: Object.fromEntries(keys.map((k, i) => [`ssh/load${i}.pub`, k.pub])) });
      await waitRunning(s.name);
      const commands = mix(s.name);
      const total = commands.reduce((n, c) => n + c.weight, 0);
      const pick = (): (typeof commands)[number] => {
        let r = Math.random() * total;
        for (const c of commands) if ((r -= c.weight) < 0) return c;
        return commands[0]!;
      };
      const pid = s.pg.proc.pid;
      // Warm up every command, then take the idle level once memory has stopped moving.
      for (const c of commands) expect(c.ok(await sshRequest(s.port, s.keyText, `${s.name}//${c.cmd}`))).toBe(true);
      let previous = rssMiB(pid);
      const idle = await waitFor("an idle level of pgod's memory", async () => {
        await Bun.sleep(1000);
        const now = rssMiB(pid);
        const steady = Math.abs(now - previous) < 1;
        previous = now;
        return steady ? now : -1;
      }, (v) => v > 0, { timeoutMs: 60_000, intervalMs: 0 });

      const rss = new RssSampler(pid, 200);
      const cpuBefore = cpuTimes(pid).self;
      const latencies: number[] = [];
      const failures: Array<{ cmd: string; code: number | null; stderr: string; error?: string }> = [];
      const perCommand = new Map<string, number>();
      const deadline = Date.now() + DURATION_MS;
      const started = performance.now();
      await Promise.all(Array.from({ length: CLIENTS }, async (_, i) => {
        const keyText = keys[i % KEYS]!.text;
        while (Date.now() < deadline) {
          let c = pick();
          // At most EXEC_CLIENTS clients run exec, so the 16 long-running commands a service may
          // run at once (and the 8 of a key) are never all taken: a refusal with 75 past that cap
          // is documented behaviour, tested in ssh_e2e_test, not a failure under load.
          while (c.cmd.startsWith("exec") && i >= EXEC_CLIENTS) c = pick();
          const a = await sshRequest(s.port, keyText, `${s.name}//${c.cmd}`, { timeoutMs: 120_000 });
          latencies.push(a.ms);
          perCommand.set(c.cmd, (perCommand.get(c.cmd) ?? 0) + 1);
          if (!c.ok(a)) {
            failures.push({ cmd: c.cmd, code: a.code, stderr: a.stderr.slice(0, 300), ...(a.error ? { error: a.error } : {}) });
          }
        }
      }));
      const elapsed = (performance.now() - started) / 1000;
      const cpu = cpuTimes(pid).self - cpuBefore;
      const peak = rss.stop();
      const target = Math.max(idle * 1.2, idle + 30);
      const after = await settleRss(pid, (v) => v <= target, 120_000).catch(() => rssMiB(pid));
      const n = latencies.length;
      console.log(
        `load: ${CLIENTS} clients, ${n} requests in ${elapsed.toFixed(1)} s (${(n / elapsed).toFixed(1)}/s), ${failures.length} failures; ` +
        `latency p50 ${Math.round(percentile(latencies, 50))} ms, p99 ${Math.round(percentile(latencies, 99))} ms, max ${Math.round(Math.max(...latencies))} ms; ` +
        `pgod CPU ${((cpu / n) * 1000).toFixed(1)} ms per request; RSS before ${Math.round(idle)} MiB, peak ${Math.round(peak)} MiB, after ${Math.round(after)} MiB ` +
        `(target ${Math.round(target)}); mix ${JSON.stringify(Object.fromEntries(perCommand))}`,
      );
      // pgod's own view: how long each request took from the exec request to its exit status.
      const served = new Map<string, number[]>();
      for (const l of s.pg.lines(/msg="SSH request" request=\S+\/\/\w+ .* ms=\d+/)) {
        const m = /request=\S+\/\/(\w+) .* ms=(\d+)/.exec(l)!;
        served.set(m[1]!, [...(served.get(m[1]!) ?? []), Number(m[2])]);
      }
      console.log(`load, as pgod timed it (exec request to exit status): ${[...served].map(([c, ms]) =>
        `${c} n=${ms.length} p50=${percentile(ms, 50)} p99=${percentile(ms, 99)} ms`).join("; ")}`);
      expect(failures.slice(0, 10)).toEqual([]);
      expect(n).toBeGreaterThan(CLIENTS);
      expect(after).toBeLessThanOrEqual(target);
      expect(s.pg.exitCode).toBeNull();
    });
  }, 600_000);
});
