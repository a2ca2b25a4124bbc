/**
 * Deploying a service's checkout: judge it, pull and bring it up, wait until it settles, roll
 * back to the last good commit when it does not, and record each attempt. Returns what happened;
 * the loop (reconcile.ts) keeps what it needs of it.
 */
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { assessTree } from "./assess.ts";
import { baseEnv } from "./child_env.ts";
import { downProject, makeCompose } from "./compose.ts";
import type { Compose } from "./compose.ts";
import { allRunning, dockerSocket } from "./containers.ts";
import { errorMessage } from "./errors.ts";
import { refuse } from "./follow.ts";
import { ensureMounted } from "./mount.ts";
import { exists, say, tail } from "./service.ts";
import type { Assessment, DeployIO, Scope, Trigger, Turn } from "./service.ts";
import { settleLoop, waitSettled } from "./settle.ts";
import type { Settled } from "./settle.ts";
import { makeSwarmApi, removeStack, stackReadiness } from "./swarm.ts";
import { makeSwarm } from "./swarm_stack.ts";
import type { SwarmApi } from "./swarm.ts";
import type { Account } from "./users.ts";
import type { Workspace } from "./workspace.ts";

/** How a deploy is asked for from outside the loop (pgoctl up, restart, rollback). */
export interface DeployNowOptions {
  /** Where compose's output goes. */
  io?: DeployIO;
  /** Only these compose services (default all). */
  services?: string[];
  /** Roll back to the last good commit when this one fails (default true). */
  autoRollback?: boolean;
  /** Keep the bad commit marked even when this deploy goes well (`pgoctl rollback`). */
  keepBad?: boolean;
}

/** How a deploy is asked for, with what the cycle already knows. */
export interface DeployOptions extends DeployNowOptions {
  /** The verdict on the commit, judged a moment ago before the checkout moved to it. */
  assessment?: Assessment | null;
  /** The checkout was put at the commit during this cycle: it need not be again. */
  restored?: boolean;
}

/** What a deploy did. */
export interface Deployed {
  /** compose's exit status; 65 refused, 75 held by the stop file, 1 rolled back. */
  code: number;
  /** Why it did not deploy (null when it did): the status's error. */
  error: string | null;
  /** The commit the checkout is at now (a rollback moves it). */
  head: string | null;
  /** Something came up well (the commit, or the commit rolled back to). */
  deployed: boolean;
  /** Nothing was said about the commit (the engine went away, pgod stopped): deploy it again next cycle. */
  retry: boolean;
  /** The message kept as the status's error across cycles: set, cleared (null), or left (undefined). */
  refusal?: string | null;
}

/** One attempt's outcome, with when it started and its history id. */
interface Attempt {
  code: number;
  why: string;
  gone?: boolean;
  aborted?: boolean;
  started: number;
  id: string;
}

/** Brings one service up and keeps what it brought up. */
export class Deployer {
  /** The compose services the last `up` started. */
  private expected: string[] = [];

  constructor(private readonly s: Scope, private readonly ws: Workspace) {}

  /**
   * Pulls and brings up the checkout at `head`, streaming compose's output; rolls back to the last
   * good commit when it fails (unless `autoRollback` is false). Call it under the service's lock.
   */
  async deploy(t: Turn, trigger: Trigger, head: string | null, o: DeployOptions = {}): Promise<Deployed> {
    const { s, ws } = this;
    const io = o.io ?? {};
    const services = o.services ?? [];
    const keep = (code: number, error: string | null, more: Partial<Deployed> = {}): Deployed =>
      ({ code, error, head, deployed: false, retry: false, ...more });
    // Judge what runs: compose reads the checkout as the commit has it, whatever a container wrote
    // (unless this very cycle just put it there).
    if (head !== null && !o.restored) await ws.moveTo(t, head);
    const judged = await this.judge(t, trigger, head, io, o.assessment ?? null);
    if ("code" in judged) return keep(judged.code, judged.error, judged.code === 65 ? { refusal: judged.error } : {});
    const pulls = judged.pulls;
    const c = this.compose(t.a, ws.composeFile());
    const run = { c, a: t.a, io, services, pulls, trigger, commit: head };
    let attempt = await this.attempt(run);
    // A container removed while the deploy settles says nothing about the commit: up again, twice at most.
    for (let retry = 1; attempt.gone && retry <= 2 && !s.signal.aborted; retry++) {
      await this.recordAttempt(head, trigger, attempt, { error: `${attempt.why}: trying again` });
      await say(io, `${attempt.why}: trying again`);
      attempt = await this.attempt(run);
    }
    if (attempt.code === 0) {
      await this.recordAttempt(head, trigger, attempt, { error: null });
      // A newer commit that deploys well ends the wait for a fix; the rollback itself does not,
      // nor does the good commit brought up again (at a restart, or after its containers went),
      // nor an older commit brought back by `pgoctl rollback` (keepBad).
      const fixed = !o.keepBad && trigger !== "rollback" && head !== s.record.state.good;
      if (head) await s.record.update({ good: head }, fixed ? ["bad"] : []);
      await this.reloadProxy(c);
      return keep(0, null, { deployed: true, refusal: null });
    }
    await say(io, attempt.why);
    if (attempt.aborted || attempt.gone) {
      // pgod stopping, or containers removed again and again: nothing said about the commit;
      // no rollback, and the next cycle (or the next start) deploys it again.
      await this.recordAttempt(head, trigger, attempt, { error: attempt.why, result: attempt.aborted ? "interrupted" : "failed" });
      return keep(attempt.code, attempt.why, { retry: true });
    }
    if (!(await this.engineAnswers())) {
      // An engine that went away says nothing about the commit: no rollback, and the same deploy
      // is tried again at the next cycle, even if old containers come back with the engine.
      const why = `${attempt.why}: the Docker engine is not answering`;
      await this.recordAttempt(head, trigger, attempt, { error: why });
      return keep(attempt.code, why, { retry: true });
    }
    const good = s.record.state.good;
    if (head === null || good === undefined || good === head || o.autoRollback === false || !s.record.mayRun(good)) {
      await this.recordAttempt(head, trigger, attempt, { error: attempt.why });
      return keep(attempt.code, attempt.why);
    }
    return this.rollBack(t, trigger, { bad: head, good, attempt, io, services });
  }

  /**
   * Whether the checkout at `head` may come up: the refusal (recorded, status 65) or the stop file
   * (75), else whether a pull has work. `fresh`: the verdict judged a moment ago in the stage worktree.
   */
  private async judge(t: Turn, trigger: Trigger, head: string | null, io: DeployIO, fresh: Assessment | null): Promise<{ code: number; error: string } | { pulls: boolean }> {
    const { s, ws } = this;
    if (s.svc.verify && head !== null && !s.record.mayRun(head)) {
      // Only a checkout whose trust root is unknown holds an unverified commit: pgoctl up must not run it.
      const why = `not verified: commit ${head.slice(0, 12)} has not been verified (verify = "commits")`;
      await say(io, `Refused: ${why}`);
      return { code: 65, error: (await refuse(s, head, trigger, why, "unverified")).message };
    }
    let { why: verdict, pulls } = fresh ?? await assessTree(s, ws, t.a, s.checkout);
    if (fresh !== null && verdict === null) {
      // Judged in the stage worktree: the checkout gets the same plain files before up.
      await ws.decryptInto(t.a, s.checkout).catch((e: unknown) => {
        verdict = errorMessage(e);
      });
    }
    if (verdict !== null) {
      await say(io, `Refused: ${verdict}`);
      return { code: 65, error: (await refuse(s, head ?? "unknown", trigger, verdict)).message };
    }
    if (await exists(s.stopFile)) {
      // The administrator's switch wins over every way up (pgoctl, webhook, a retry).
      const why = `Cannot deploy "${s.svc.name}": the stop file "${s.stopFile}" exists`;
      await say(io, why);
      s.status.lastError = why;
      return { code: 75, error: why };
    }
    return { pulls };
  }

  /**
   * The deploy of `bad` failed: the last commit that deployed well goes back up, and the bad one
   * is not retried until a newer commit arrives.
   */
  private async rollBack(t: Turn, trigger: Trigger, o: { bad: string; good: string; attempt: Attempt; io: DeployIO; services: string[] }): Promise<Deployed> {
    const { s, ws } = this;
    const { bad, good, attempt } = o;
    await say(o.io, `Rolling back to ${good.slice(0, 12)}`);
    s.log.error("deploy failed, rolling back", { commit: bad.slice(0, 12), to: good.slice(0, 12), reason: attempt.why });
    await s.record.update({ bad });
    await s.record.record({ commit: bad, time: attempt.started, trigger, result: "rolled back", durationMs: s.d.clock.now() - attempt.started, detail: attempt.why, id: attempt.id });
    s.d.onDeploy?.(s.svc.name, "rolled back");
    await ws.moveTo(t, good);
    const back = await this.deploy(t, "rollback", good, { io: o.io, services: o.services, autoRollback: false, restored: true });
    if (back.code !== 0) {
      // The last good commit fails as well: the fault lies outside the new commit (an engine
      // going away, say), so it is not held against it and the next cycle tries it again.
      await s.record.update({}, ["bad"]);
      s.log.warn("the rollback failed too: the new commit will be tried again", { commit: bad.slice(0, 12) });
      const error = `Commit ${bad.slice(0, 12)} failed (${attempt.why}), and so did rolling back to ${good.slice(0, 12)}`;
      s.status.lastError = error;
      return { ...back, error };
    }
    const error = `Commit ${bad.slice(0, 12)} failed (${attempt.why}); rolled back to ${good.slice(0, 12)}`;
    s.status.lastResult = "rolled back";
    s.status.lastError = error;
    return { ...back, code: 1, error, refusal: error };
  }

  /** One deploy attempt: logged and written to the history when it starts, then brought up. */
  private async attempt(o: { c: Compose; a: Account; io: DeployIO; services: string[]; pulls: boolean; trigger: Trigger; commit: string | null }): Promise<Attempt> {
    const { s } = this;
    const started = s.d.clock.now();
    const id = randomBytes(6).toString("hex");
    s.log.info("deploying", { commit: o.commit?.slice(0, 12), trigger: o.trigger });
    await s.record.record({ commit: o.commit ?? "unknown", time: started, trigger: o.trigger, result: "started", durationMs: 0, id });
    return { ...(await this.bringUp(o.c, o)), started, id };
  }

  /** Pull and up (with registry logins), then wait until the containers run and are healthy. */
  private async bringUp(c: Compose, o: { a: Account; io: DeployIO; services: string[]; pulls: boolean }): Promise<{ code: number; why: string; gone?: boolean; aborted?: boolean }> {
    const { s } = this;
    const { io, services } = o;
    const started = Date.now();
    try {
      await this.ensureData();
      const code = await s.d.slots.run(() =>
        c.withRegistries(s.svc.registries, async () => {
          // Skipped only when every image is built or has pull_policy never: it would do nothing.
          const pull = o.pulls ? await c.run(["pull", "--quiet", "--ignore-buildable", ...services], io) : null;
          if (pull && pull.exitCode !== 0) s.log.warn("pull failed, trying up with the images present", { error: tail(pull.stderr) });
          const up = await c.run(["up", "--detach", "--remove-orphans", "--quiet-pull", ...services], io);
          if (up.exitCode === 0) this.expected = await c.services();
          return up.exitCode;
        })
      );
      if (code !== 0) return { code, why: `${s.svc.engine === "swarm" ? "docker stack deploy" : "docker compose up"} exited with status ${code}` };
    } catch (e) {
      // A failed registry login or mount: compose never ran.
      return { code: 1, why: errorMessage(e) };
    }
    // The engine may go away while containers start: a failed attempt like any other.
    const waitFor = services.length > 0 ? services : this.expected;
    const wait = s.svc.engine === "swarm" ? this.waitStack(waitFor, started) : waitSettled({
      project: s.svc.name, expected: waitFor, containers: s.d.containers, ...this.settleOptions(),
    });
    const r = await wait.catch((e: unknown): Settled => ({ state: "failed", why: errorMessage(e) }));
    if (r.state === "ready") return { code: 0, why: "" };
    return { code: 1, why: r.why, gone: r.state === "gone", aborted: r.state === "aborted" };
  }

  private settleOptions(): { clock: Scope["d"]["clock"]; timeoutMs: number; signal: AbortSignal; settleMs?: number; pollMs?: number } {
    const { s } = this;
    return {
      clock: s.d.clock, timeoutMs: s.svc.healthTimeoutMs, signal: s.signal,
      ...(s.d.settleMs !== undefined ? { settleMs: s.d.settleMs } : {}), ...(s.d.pollMs !== undefined ? { pollMs: s.d.pollMs } : {}),
    };
  }

  /** Writes an attempt's result to the history, the log, the metric and the status. */
  private async recordAttempt(commit: string | null, trigger: Trigger, a: Attempt, o: { error: string | null; result?: "failed" | "interrupted" }): Promise<void> {
    const { s } = this;
    const ok = o.error === null;
    const result = o.result ?? "failed";
    if (!ok) s.log.warn(result === "interrupted" ? "deploy interrupted" : "deploy failed", { commit: commit?.slice(0, 12), trigger, reason: o.error ?? "" });
    await s.record.record({
      commit: commit ?? "unknown", time: a.started, trigger, result: ok ? "deployed" : result,
      durationMs: s.d.clock.now() - a.started, ...(o.error ? { detail: o.error } : {}), id: a.id,
    });
    s.status.lastResult = ok ? "deployed" : "failed";
    s.d.onDeploy?.(s.svc.name, s.status.lastResult);
    s.status.lastError = o.error;
    if (!ok) return;
    s.status.deployedAt = s.d.clock.now();
    s.log.info("deployed", { commit: commit?.slice(0, 12), trigger, ms: s.d.clock.now() - a.started });
  }

  /** Whether the Docker engine answers (a list of this project's containers). */
  private engineAnswers(): Promise<boolean> {
    return this.s.d.containers.ofProject(this.s.svc.name).then(() => true, () => false);
  }

  /** Whether what the last `up` started still runs (for swarm: the stack's services exist). */
  async running(): Promise<boolean> {
    if (this.s.svc.engine === "swarm") return this.stackPresent();
    return allRunning(this.expected, await this.s.d.containers.ofProject(this.s.svc.name));
  }

  /** Pulls images now (with registry logins), streaming compose's output; call it under the lock. */
  async pull(a: Account, o: { io?: DeployIO; services?: string[] } = {}): Promise<number> {
    const io = o.io ?? {};
    const c = this.compose(a, this.ws.composeFile());
    try {
      return await c.withRegistries(this.s.svc.registries, async () =>
        (await c.run(["pull", "--ignore-buildable", ...(o.services ?? [])], io)).exitCode
      );
    } catch (e) {
      await say(io, errorMessage(e));
      return 1;
    }
  }

  /** Brings the project down (the stop file): with its compose file, else by its labels. */
  async down(a: Account): Promise<void> {
    const { s } = this;
    let file: string | null = null;
    try {
      file = this.ws.composeFile();
    } catch {
      // No compose file: compose can still find the project's containers by its labels.
    }
    if (file) await this.compose(a, file).must(["down", "--remove-orphans"]);
    else if (s.svc.engine === "swarm") await removeStack(s.d.runner, s.svc.name, baseEnv(a), a);
    else await downProject(s.d.runner, s.svc.name, baseEnv(a), a);
  }

  /** Runs the `reload` command when the import file changed; a failure is retried next cycle. */
  async reloadProxy(c: Compose | Account): Promise<void> {
    const { s, ws } = this;
    const reload = s.svc.reload;
    if (!ws.reloadDue || !reload) return;
    const compose = "run" in c ? c : this.compose(c, ws.composeFile());
    const r = await compose.run(["exec", "-T", reload.container, ...reload.argv], { timeoutMs: 120_000 });
    if (r.exitCode === 0) {
      ws.reloadDue = false;
      s.log.info("reloaded the proxy", { container: reload.container });
    } else {
      s.log.warn("proxy reload failed, retrying next cycle", { container: reload.container, status: r.exitCode, error: tail(r.stderr) });
    }
  }

  /** A compose target for the checkout (a `docker stack` one for swarm services). */
  compose(a: Account, file: string): Compose {
    const { s, ws } = this;
    const target = { project: s.svc.name, dir: s.checkout, file, account: a, env: s.svc.env, dockerConfig: ws.dockerConfig };
    if (s.svc.engine !== "swarm") return makeCompose(s.d.runner, target);
    return makeSwarm(s.d.runner, target, {
      api: this.swarmApi,
      ...(s.d.composeCgroup ? { cgroupDir: s.d.composeCgroup } : {}),
      onPlan: (plan) => {
        for (const w of plan.warnings) s.log.warn("left out of the stack", { detail: w });
      },
    });
  }

  private get swarmApi(): SwarmApi {
    return (this.s.d.swarm ??= makeSwarmApi(dockerSocket()));
  }

  /** Mounts the NFS share on the data directory when it is configured and not mounted yet. */
  private async ensureData(): Promise<void> {
    const { s, ws } = this;
    if (!s.svc.mount) return;
    const target = ws.dataDir;
    try {
      if (await ensureMounted(s.svc.name, s.svc.mount, target, { runner: s.d.runner, stateDir: join(s.d.dir, ".state"), ...(s.d.mountinfo ? { mountinfo: s.d.mountinfo } : {}) })) {
        s.log.info("mounted the data share", { dir: target });
      }
    } catch (e) {
      throw new Error(`Cannot mount the data share on "${target}": ${errorMessage(e)}`);
    }
  }

  /** Whether every swarm service of the stack exists (Swarm heals tasks itself); sets the replica metrics. */
  private async stackPresent(): Promise<boolean> {
    const { s } = this;
    const services = await this.swarmApi.services(s.svc.name);
    const tasks = await this.swarmApi.tasks(services.map((x) => x.ID));
    const r = stackReadiness(s.svc.name, this.expected, services, tasks, 0);
    s.d.onReplicas?.(s.svc.name, r.replicas);
    const names = new Set(services.map((x) => x.Spec.Name));
    return this.expected.length > 0 ? this.expected.every((e) => names.has(`${s.svc.name}_${e}`)) : services.length > 0;
  }

  /** Waits until the stack converged (see stackReadiness), with the loop compose waits use. */
  private waitStack(expected: string[], since: number): Promise<Settled> {
    const { s } = this;
    return settleLoop(this.settleOptions(), `not converged after ${Math.round(s.svc.healthTimeoutMs / 1000)}s`, async () => {
      const services = await this.swarmApi.services(s.svc.name);
      const r = stackReadiness(s.svc.name, expected, services, await this.swarmApi.tasks(services.map((x) => x.ID)), since);
      s.d.onReplicas?.(s.svc.name, r.replicas);
      return r;
    });
  }
}
