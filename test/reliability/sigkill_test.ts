/**
 * pgod killed with SIGKILL in the middle of a deploy, then started again on the same --dir: it
 * converges on the new commit with one container, keeps its SSH host key, and its history stays
 * readable (a torn last line, as a crash mid-write leaves it, costs no later entry).
 * Run `bash scripts/build.sh` first.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { appendFile, readFile } from "node:fs/promises";
import { join } from "node:path";
import {
  composeExec, containersOf, openssh, preflight, runningOf, scenario, sshListening, statusOf, sweepRun, waitFor,
} from "../e2e/harness.ts";
import { readHistory } from "../../src/history.ts";
import { hashOf, historyOf, serve, version, versionOf } from "./faults.ts";

beforeAll(() => preflight());
afterAll(sweepRun);

describe("pgod killed with SIGKILL", () => {
  test.concurrent("pgod killed during a deploy and started again converges, with its history and host key intact", async () => {
    await scenario("sigkill", async (env) => {
      const s = await serve(env, "sigkill");
      const { name, pg } = s;
      const hostKeyFile = join(env.dir, "ssh_host_ed25519_key");
      const keyBytes = await hashOf(hostKeyFile);
      const before = await historyOf(env.dir, name);
      // Each attempt is written when it starts and again with its result.
      expect(before.entries.map((e) => e["result"])).toEqual(["started", "deployed"]);

      const since = pg.log().length;
      const v2 = await s.repo.commit({ "compose.yaml": version(2) }, "version 2");
      await pg.waitForLog(composeExec(name, "up"), { since });
      pg.proc.kill("SIGKILL");
      expect(await pg.exited).toBe(137);
      // A crash in the middle of an append leaves a line without its end.
      const historyFile = join(env.dir, ".state", name, "history");
      await appendFile(historyFile, `{"commit":"${v2}","time":${Date.now()},"trig`);

      const again = await env.pgod([{ name, repository: s.repo.bare }], { tag: "again" });
      const { port, hostKey } = await sshListening(again);
      expect(hostKey).toBe(s.hostKey);
      expect(await hashOf(hostKeyFile)).toBe(keyBytes);
      await again.waitForLog(new RegExp(`msg=deployed service=${name} commit=${v2.slice(0, 12)} `));
      const [c] = await waitFor("one running container of version 2", () => containersOf(name), (cs) => cs.length === 1 && cs[0]!.state === "running");
      expect(await versionOf(c!.id)).toBe("2");

      const after = await historyOf(env.dir, name);
      expect(after.endsWithNewline).toBe(true);
      expect(after.torn.length).toBe(1);
      expect(after.entries.at(-1)).toMatchObject({ commit: v2, result: "deployed", trigger: "start" });
      // The attempt SIGKILL cut short is in the history as interrupted, then the one that deployed.
      const merged = (await readHistory(join(env.dir, ".state", name, "history"))).map((e) => `${e.commit.slice(0, 12)} ${e.trigger} ${e.result}`);
      expect(merged.slice(-2)).toEqual([`${v2.slice(0, 12)} poll interrupted`, `${v2.slice(0, 12)} start deployed`]);
      expect(again.lines(new RegExp(`msg="a deploy attempt was cut short when pgod last stopped" service=${name} commit=${v2.slice(0, 12)} `))).toHaveLength(1);
      const state = JSON.parse(await readFile(join(env.dir, ".state", name, "state.json"), "utf8")) as Record<string, unknown>;
      expect(state["good"]).toBe(v2);
      const client = { ...s, port };
      expect((await statusOf(client))["commit"]).toBe(v2);
      const hist = await openssh({ port, key: s.key, knownHosts: "/dev/null" }, `${name}//history`);
      expect(hist.code).toBe(0);
      expect(hist.stdout.split("\n")[0]).toMatch(new RegExp(`${v2.slice(0, 12)}\\s+start\\s+deployed`));
      expect(hist.stdout.split("\n")[1]).toMatch(new RegExp(`${v2.slice(0, 12)}\\s+poll\\s+interrupted`));
      // The next cycle sees nothing to do: still exactly one container.
      await again.waitForLog(/msg=exec argv="git ls-remote/, { since: again.log().length });
      expect((await runningOf(name)).map((x) => x.id)).toEqual([c!.id]);
    });
  });
});
