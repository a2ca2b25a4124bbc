// About 400 lines: ServiceWorker's public API (what daemon.ts and commands.ts call) beside the short loop that sequences the parts.
/**
 * One reconcile loop per service: clone, follow the branch, deploy when the compose model's files
 * change, bring containers back when they are gone, keep them down while a stop file exists.
 * Each service runs independently; an error in one is caught here and never reaches another.
 * ServiceWorker sequences the parts (follow.ts, deploy.ts, workspace.ts, service_record.ts) and
 * is what daemon.ts and commands.ts use.
 */
import { join } from "node:path";
import type { ServiceConfig } from "./config.ts";
import type { Compose } from "./compose.ts";
import { Deployer } from "./deploy.ts";
import type { DeployNowOptions, DeployOptions, Deployed } from "./deploy.ts";
import { RollbackError, errorMessage } from "./errors.ts";
import { evaluateCommit } from "./assess.ts";
import { Follower } from "./follow.ts";
import type { Followed, Refused } from "./follow.ts";
import { readServiceKeys } from "./keys.ts";
import type { PublicKey } from "./keys.ts";
import type { Logger } from "./log.ts";
import { jitter, Mutex } from "./scheduler.ts";
import { exists, makeTurn, say, tail } from "./service.ts";
import type { DeployIO, ReconcileDeps, Scope, ServiceStatus, Trigger, Turn } from "./service.ts";
import { ServiceRecord } from "./service_record.ts";
import type { Hold } from "./state.ts";
import type { Verdict } from "./verdict.ts";
import { Workspace } from "./workspace.ts";

export type { DeployNowOptions } from "./deploy.ts";
export type { DeployIO, DeployResult, ReconcileDeps, ServiceStatus, Trigger } from "./service.ts";
export type { Hold } from "./state.ts";

/** The reconcile loop of one service. */
export class ServiceWorker {
  readonly lock = new Mutex();
  private readonly log: Logger;
  private readonly s: Scope;
  private readonly record: ServiceRecord;
  private readonly ws: Workspace;
  private readonly follower: Follower;
  private readonly deployer: Deployer;
  private readonly st: ServiceStatus;
  private readonly abort = new AbortController();
  /** The commit the checkout is at (and runs, once `deployedAt` is set); null until cloned, or when damaged. */
  private head: string | null = null;
  /**
   * The checkout broke (its .git removed or damaged): clone it again at the next cycle. Until
   * then status and keys still name `head`, but nothing moves the checkout to it or judges from it.
   */
  private reclone = false;
  private deployedOnce = false;
  /** The last deploy said nothing about the commit (the engine went away): deploy again next cycle. */
  private retryDeploy = false;
  private stoppedByFile = false;
  private prepared = false;
  /** With `verify = "commits"`: whether the checkout's commit was judged since this worker started. */
  private trustChecked = false;
  /** A commit refused by the policy or its signature; not judged again until a newer one arrives. */
  private refused: Refused | null = null;
  /** The message the status keeps as its error across cycles (a refusal, a rollback) until a deploy. */
  private refusal: string | null = null;
  /** Cycles in a row that failed to reach the remote or to deploy. */
  private failStreak = 0;
  private pending: Trigger | null = null;
  private wake: (() => void) | null = null;
  private loop: Promise<void> | null = null;
  private keyCache: { commit: string; keys: PublicKey[] } | null = null;

  constructor(readonly svc: ServiceConfig, private readonly d: ReconcileDeps) {
    this.log = d.logger.with({ service: svc.name });
    this.record = new ServiceRecord(join(d.dir, ".state"), svc, this.log);
    this.st = {
      name: svc.name, commit: null, deployedAt: null, lastResult: null, lastError: null,
      stopFile: false, nextPollAt: null, lastPollAt: null, hold: null,
      pinned: null, good: null, bad: null, refused: null,
    };
    this.s = {
      svc, d, log: this.log, checkout: join(d.dir, svc.name), stopFile: join(d.dir, `${svc.name}.stop`),
      record: this.record, status: this.st, signal: this.abort.signal,
    };
    this.ws = new Workspace(this.s);
    this.follower = new Follower(this.s, this.ws);
    this.deployer = new Deployer(this.s, this.ws);
  }

  /** The checkout's commit, or null while it is broken (what a deploy, rollback or check goes from). */
  private get current(): string | null {
    return this.reclone ? null : this.head;
  }

  /** Starts the loop: a cycle now, then one every interval plus jitter. */
  start(): void {
    this.loop ??= this.run();
  }

  /** Stops polling and waits (at most `graceMs`) for a running cycle to finish. */
  async stop(graceMs = 30_000): Promise<void> {
    this.abort.abort();
    this.wake?.();
    if (!this.loop) return;
    const done = new AbortController();
    await Promise.race([this.loop, this.d.clock.sleep(graceMs, done.signal)]);
    done.abort();
  }

  /** Asks for a cycle soon; triggers that arrive during a cycle coalesce into one follow-up. */
  trigger(reason: Trigger): void {
    this.pending ??= reason;
    this.wake?.();
  }

  /** Runs `fn` while holding this service's lock, in turn with the reconcile cycle. */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.lock.run(fn);
  }

  status(): ServiceStatus {
    const r = this.record.state;
    return { ...this.st, commit: this.head, hold: r.hold ?? null, pinned: r.pin?.commit ?? null, good: r.good ?? null, bad: r.bad ?? null };
  }

  /** The stop file's path while it exists, else null. */
  async stopFileNow(): Promise<string | null> {
    return (await exists(this.s.stopFile)) ? this.s.stopFile : null;
  }

  /** The checkout directory. */
  get dir(): string {
    return this.s.checkout;
  }

  /** The deploy history's file (`pgoctl history` reads it). */
  get historyFile(): string {
    return this.record.historyFile;
  }

  /** The keys in the checkout's `ssh/` folder, read again whenever the commit changes. */
  async keys(): Promise<PublicKey[]> {
    const commit = this.head;
    if (commit === null) return [];
    if (this.keyCache?.commit !== commit) {
      const keys = await readServiceKeys(this.s.checkout, { warn: (m) => this.log.warn(m) });
      this.keyCache = { commit, keys };
    }
    return this.keyCache.keys;
  }

  /** The age recipient (`age1…`) that this service's encrypted files are made for. */
  async recipient(): Promise<string> {
    return (await this.ws.ageKeys()).recipient;
  }

  /**
   * The verdict on the newest commit of the branch, what would deploy next (DECISIONS.md #12):
   * fetched now (else the last fetched one) and judged in a stage worktree; the checkout stays.
   */
  async check(): Promise<Verdict> {
    return this.lock.run(async () => {
      const running = this.st.deployedAt !== null ? this.current : null;
      return this.follower.check(await makeTurn(this.s), this.current, running);
    });
  }

  /** Sets or clears the pgoctl hold; it is kept in state.json so that it survives a restart. */
  setHold(hold: Hold | null): Promise<void> {
    return this.record.setHold(hold);
  }

  /**
   * Pulls and brings the project up now, streaming compose's output; call it inside `exclusive`.
   * Returns compose's exit status.
   */
  async deployNow(trigger: Trigger, o: DeployNowOptions = {}): Promise<number> {
    return (await this.deployWith(await makeTurn(this.s), trigger, o)).code;
  }

  /** Deploys the checkout at `head` and keeps what the loop needs of the outcome. */
  private async deployWith(t: Turn, trigger: Trigger, o: DeployOptions): Promise<Deployed> {
    const head = this.current;
    const r = await this.deployer.deploy(t, trigger, head, o);
    if (r.head !== head) this.head = r.head; // a rollback moved the checkout
    if (r.deployed) {
      this.deployedOnce = true;
      this.retryDeploy = false;
    }
    if (r.retry) this.retryDeploy = true;
    if (r.refusal !== undefined) this.refusal = r.refusal;
    return r;
  }

  /** Pins `commit`: no new commits are pulled until `unpin` or a config change. */
  async pin(commit: string): Promise<void> {
    await this.record.pin(commit);
    this.log.info("pinned", { commit: commit.slice(0, 12) });
  }

  /** Releases the pin and asks for a cycle, which pulls what is new. */
  async unpin(): Promise<void> {
    await this.record.unpin();
    this.log.info("unpinned");
    this.trigger("pgoctl");
  }

  /**
   * Deploys an earlier commit (by default the last one that deployed well before the current
   * one) and pins it; call it inside `exclusive`. Returns compose's status, or 65 when the policy
   * refuses it; throws when the commit is unknown.
   */
  async rollbackTo(rev: string | null, io: DeployIO = {}): Promise<number> {
    const t = await makeTurn(this.s);
    const target = await this.rollbackTarget(t, rev);
    const verdict = await evaluateCommit(this.s, this.ws, t, target);
    if (verdict.why !== null) {
      await say(io, `Refused: ${verdict.why}`);
      return 65;
    }
    await this.ws.moveTo(t, target);
    this.head = target;
    this.reclone = false;
    await this.pin(target);
    // Judged in the stage worktree a moment ago, and the checkout just put there: neither again.
    return (await this.deployWith(t, "pgoctl", { io, autoRollback: false, keepBad: true, assessment: verdict, restored: true })).code;
  }

  /** The commit `rev` names, else the last one that deployed well before what runs; one that may run. */
  private async rollbackTarget(t: Turn, rev: string | null): Promise<string> {
    let target: string | null;
    if (rev !== null) {
      target = await t.git.resolveCommit(this.s.checkout, rev);
      if (target === null) throw new RollbackError("unknown commit", `Cannot find commit "${rev}" in the checkout`);
    } else {
      const earlier = (await this.record.history()).filter((e) => e.result === "deployed" && e.commit !== this.current && this.record.mayRun(e.commit));
      target = earlier.at(-1)?.commit ?? null;
      if (target === null) throw new RollbackError("nothing earlier", "Cannot roll back: no earlier commit deployed well");
    }
    if (!this.record.mayRun(target)) {
      throw new RollbackError("unverified", `Cannot roll back to ${target.slice(0, 12)}: it did not verify when it was deployed (verify = "commits")`);
    }
    return target;
  }

  /** Fetches now and deploys if something changed (one cycle, in turn with the loop). */
  async syncNow(): Promise<ServiceStatus> {
    await this.lock.run(() => this.cycle("pgoctl"));
    return this.status();
  }

  /** Puts the checkout back to the commit that runs (see Workspace.moveTo); call it inside `exclusive`. */
  async restoreNow(): Promise<void> {
    const head = this.current;
    if (head === null) return;
    const t = await makeTurn(this.s);
    await this.ws.moveTo(t, head);
    // The clean took the plain files of encrypted ones too: compose needs them back.
    await this.ws.decryptInto(t.a, this.s.checkout);
  }

  /** Pulls images now (with registry logins), streaming compose's output; call it inside `exclusive`. */
  async pullNow(io: DeployIO = {}, services: string[] = []): Promise<number> {
    const a = await this.d.users.lookup(this.svc.user);
    return this.deployer.pull(a, { io, services });
  }

  /** Composes a target for commands from pgoctl. */
  async composeFor(): Promise<Compose> {
    const a = await this.d.users.lookup(this.svc.user);
    return this.deployer.compose(a, this.ws.composeFile());
  }

  private async run(): Promise<void> {
    let trigger: Trigger = "start";
    while (!this.abort.signal.aborted) {
      this.st.nextPollAt = null;
      await this.lock.run(() => this.cycle(trigger));
      if (this.abort.signal.aborted) break;
      // Back off while the remote or the engine keeps failing: 2x, then 4x the interval.
      trigger = await this.waitForTrigger(jitter(this.d.intervalMs, this.d.random) * Math.min(2 ** this.failStreak, 4));
    }
  }

  private async waitForTrigger(ms: number): Promise<Trigger> {
    if (this.pending) return this.take();
    this.st.nextPollAt = this.d.clock.now() + ms;
    const woken = new AbortController();
    this.wake = () => woken.abort();
    const onStop = (): void => woken.abort();
    this.abort.signal.addEventListener("abort", onStop, { once: true });
    await this.d.clock.sleep(ms, woken.signal);
    this.abort.signal.removeEventListener("abort", onStop);
    this.wake = null;
    return this.pending ? this.take() : "poll";
  }

  private take(): Trigger {
    const t = this.pending ?? "poll";
    this.pending = null;
    return t;
  }

  /** One reconcile pass. Never throws: errors land in the status and the log. */
  async cycle(trigger: Trigger): Promise<void> {
    this.st.lastPollAt = this.d.clock.now();
    try {
      const t = await makeTurn(this.s);
      if (!this.prepared) await this.prepare(t);
      let deploy = !this.deployedOnce || this.retryDeploy;
      const head = await this.ensureHead(t);
      if (head.cloned) deploy = true;
      if (await this.stoppedFile(t)) return;
      if (this.stoppedByFile) {
        this.log.info("stop file removed, bringing the service up");
        this.stoppedByFile = false;
        deploy = true;
      }
      // A push (webhook) or a `pgoctl sync` says the remote moved: fetch at once, no ls-remote first.
      const followed = await this.followBranch(t, head.commit, trigger === "start" || trigger === "poll");
      if (followed.kind === "moved" && followed.relevant) deploy = true;
      const hold = this.record.hold;
      if (!deploy && hold === null && !(await this.deployer.running())) {
        this.log.warn("containers missing or not running, bringing them up");
        deploy = true;
      }
      await this.ws.writeImport(t.a);
      if (deploy && hold === null) {
        const moved = followed.kind === "moved";
        await this.deployInCycle(t, trigger, { restored: moved, assessment: moved ? followed.assessment : null });
      } else if (hold === null) await this.deployer.reloadProxy(t.a);
      const followError = followed.kind === "failed" ? followed.error : null;
      this.st.lastError = followError ?? this.refusal;
      this.failStreak = followError === null ? 0 : this.failStreak + 1;
    } catch (e) {
      this.st.lastError = errorMessage(e);
      this.failStreak++;
      this.log.error("cycle failed", { trigger, error: errorMessage(e) });
    }
  }

  /** Once per start: closes attempts a stopped pgod left open, folds old state in, makes the directories. */
  private async prepare(t: Turn): Promise<void> {
    for (const e of await this.record.closeInterrupted(this.d.clock.now())) {
      this.log.warn("a deploy attempt was cut short when pgod last stopped", { commit: e.commit.slice(0, 12), trigger: e.trigger });
    }
    await this.record.migrate();
    await this.ws.prepare(t.a);
    this.prepared = true;
  }

  /** The checkout's commit, cloned when missing; with `verify`, judged once per start. */
  private async ensureHead(t: Turn): Promise<{ commit: string; cloned: boolean }> {
    let cloned = false;
    if (this.head === null || this.reclone) {
      this.head = await this.ws.ensureCheckout(t);
      this.reclone = false;
      cloned = true;
      this.trustChecked = false; // a fresh clone holds the branch's newest commit, not a verified one
    }
    if (this.svc.verify && !this.trustChecked) {
      const r = await this.follower.trustCheckout(t.git, this.head);
      this.head = r.head;
      if (r.refused) this.setRefused(r.refused);
      this.trustChecked = true;
    }
    return { commit: this.head, cloned };
  }

  /** Whether the stop file keeps the service down (brought down the first cycle it is seen). */
  private async stoppedFile(t: Turn): Promise<boolean> {
    if (!(await exists(this.s.stopFile))) {
      this.st.stopFile = false;
      return false;
    }
    this.st.stopFile = true;
    if (!this.stoppedByFile) {
      this.log.info("stop file present, bringing the service down", { file: this.s.stopFile });
      await this.deployer.down(t.a);
      this.stoppedByFile = true;
      this.st.lastResult = "stopped";
      this.d.onDeploy?.(this.svc.name, "stopped");
    }
    this.st.lastError = null;
    return true;
  }

  /**
   * Follows the branch from `head` and keeps what it found. A failure keeps the checkout and the
   * running containers, to try again next cycle; a checkout that itself broke (its .git removed
   * or damaged) is cloned again at the next cycle.
   */
  private async followBranch(t: Turn, head: string, probe: boolean): Promise<Followed | { kind: "failed"; error: string }> {
    try {
      const r = await this.follower.follow(t, head, { probe, skip: this.refused?.commit ?? null });
      if (r.kind === "refused") this.setRefused(r.refused);
      if (r.kind === "moved") {
        this.head = r.head;
        this.refused = null;
        this.refusal = null;
      }
      return r;
    } catch (e) {
      if ((await t.git.head(this.s.checkout)) === null) {
        this.log.warn("checkout is damaged, cloning it again at the next cycle", { dir: this.s.checkout });
        this.reclone = true;
      } else {
        this.log.warn("cannot follow the remote, keeping what runs", { error: errorMessage(e) });
      }
      return { kind: "failed", error: errorMessage(e) };
    }
  }

  private setRefused(r: Refused): void {
    this.refused = r;
    this.refusal = r.message;
  }

  /** The loop's deploy: a failure throws with compose's own words added, so the cycle counts it. */
  private async deployInCycle(t: Turn, trigger: Trigger, o: DeployOptions): Promise<void> {
    const errors: Uint8Array[] = [];
    const r = await this.deployWith(t, trigger, { ...o, io: { onStderr: (c) => void (errors.length < 64 && errors.push(c)) } });
    if (r.code === 0) return;
    // The deploy said why (a failed login or mount never reached compose); add compose's words.
    const said = this.ws.redact(tail(Buffer.concat(errors).toString("utf8")));
    const why = r.error ?? `docker compose up exited with status ${r.code}`;
    const msg = said && !why.includes(said) ? `${why}: ${said}` : why;
    this.st.lastError = msg;
    throw new Error(msg);
  }
}
