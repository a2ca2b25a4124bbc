/**
 * One reconcile loop per service: clone, follow the branch, deploy when the compose model's files
 * change, bring containers back when they are gone, keep them down while a stop file exists.
 * Each service runs independently; an error in one is caught here and never reaches another.
 */
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { chmod, chown, lstat, mkdir, rename, rm, stat } from "node:fs/promises";
import { dirname, join, posix } from "node:path";
import type { ServiceConfig } from "./config.ts";
import { composeDependencies, composeFileAt, COMPOSE_FILES, downProject, findComposeFile, makeCompose } from "./compose.ts";
import type { Compose } from "./compose.ts";
import { allRunning, dockerSocket } from "./containers.ts";
import type { Containers } from "./containers.ts";
import { RollbackError, SecretError, errorMessage } from "./errors.ts";
import type { Runner } from "./exec.ts";
import { gitDirOf, GITDIRS, makeGit, NET_TIMEOUT_MS, remoteAccess } from "./git.ts";
import { chownTree, ensureGitDirs, migrateGitDir, restoreCheckout } from "./checkout.ts";
import type { Git } from "./git.ts";
import { writeImportFile } from "./caddy.ts";
import { addLineBeneath, writeFileAtomic } from "./files.ts";
import type { HistoryTrigger } from "./history.ts";
import { ensureMounted } from "./mount.ts";
import { settleLoop, waitSettled } from "./settle.ts";
import type { Settled } from "./settle.ts";
import { ServiceRecord } from "./service_record.ts";
import type { Hold } from "./state.ts";
import { composeModel } from "./compose_model.ts";
import type { EngineNames } from "./policy.ts";
import { evaluatePolicy, formatViolations } from "./policy.ts";
import { pullsImages, screenComposeTree, screenYaml } from "./yaml_screen.ts";
import { readServiceKeys } from "./keys.ts";
import { locateFindings } from "./verdict.ts";
import type { Finding, Verdict } from "./verdict.ts";
import { describe, judgeCommit, signersWriter, UnknownTrustRoot } from "./signatures.ts";
import { makeSwarm, makeSwarmApi, removeStack, stackReadiness, stackWarnings } from "./swarm.ts";
import { parse as parseYaml } from "yaml";
import type { Replicas, StackPlan, SwarmApi } from "./swarm.ts";
import { decryptTree, plainName, redact, serviceKeys } from "./secrets.ts";
import { advertisedHead, isHttpRemote, RemoteTimeout, UnsupportedRemote } from "./refs.ts";
import { isSshRemote, sshAdvertisedHead } from "./ssh_refs.ts";
import type { PublicKey } from "./keys.ts";
import type { Logger } from "./log.ts";
import { jitter, Mutex } from "./scheduler.ts";
import type { Clock, Semaphore } from "./scheduler.ts";
import type { Account, Users } from "./users.ts";
import { baseEnv, CHILD_PATH } from "./child_env.ts";

/** What started a cycle. */
/** What started a cycle or a deploy; the history records it (one type for both). */
export type Trigger = HistoryTrigger;

/** Outcome of the last deploy attempt. */
export type DeployResult = "deployed" | "failed" | "stopped" | "refused" | "rolled back" | "unverified";

/** What `status` shows for a service. */
export interface ServiceStatus {
  name: string;
  /** Commit checked out (and deployed, once `deployedAt` is set). */
  commit: string | null;
  deployedAt: number | null;
  lastResult: DeployResult | null;
  lastError: string | null;
  stopFile: boolean;
  nextPollAt: number | null;
  lastPollAt: number | null;
  /** Set by `down`/`stop` through pgoctl: nothing brings the service back until `up`/`start`/`restart`. */
  hold: Hold | null;
  /** Set by `pgoctl rollback`: this commit is kept and no new commits are pulled until `unpin`. */
  pinned: string | null;
  /** The last commit that deployed well (what a rollback goes back to). */
  good: string | null;
  /** A commit that was rolled back; it is not tried again until a newer one arrives. */
  bad: string | null;
  /** The newest commit of the branch when it was refused (what runs keeps running), and why. */
  refused?: { commit: string; reason: string } | null;
  /** With `verify = "commits"`: why the newest commit of the branch did not verify. */
  unverified?: string;
}

export type { Hold } from "./state.ts";

/** Where `deployNow` sends compose's output. */
export interface DeployIO {
  onStdout?: (chunk: Uint8Array) => Promise<void> | void;
  onStderr?: (chunk: Uint8Array) => Promise<void> | void;
  signal?: AbortSignal;
}

/** Everything with side effects that a loop uses. */
export interface ReconcileDeps {
  runner: Runner;
  users: Users;
  containers: Containers;
  logger: Logger;
  clock: Clock;
  random: () => number;
  /** Bounds concurrent clones and deploys across all services. */
  slots: Semaphore;
  /** `--dir`: checkouts live in `<dir>/<name>`. */
  dir: string;
  /** `--datadir`: data directories live in `<datadir>/<name>`. */
  datadir: string;
  intervalMs: number;
  makeGit?: (runner: Runner, account: Account, service: string, repository?: string) => Git;
  /** Asks an HTTP(S) remote where a branch points (default advertisedHead, in-process). */
  remoteRefs?: typeof advertisedHead;
  /** Asks an ssh remote where a branch points (default sshAdvertisedHead, in-process). */
  sshRefs?: typeof sshAdvertisedHead;
  /** The Caddy import file's text, for the service that sets `import`. */
  importText?: string;
  /** This service's own limited cgroup(s) for `docker compose config` (DECISIONS.md #10), when cgroups work. */
  composeCgroup?: string | readonly string[];
  /** How long containers must stay ready after `up` before a deploy counts as good (default 2 s). */
  settleMs?: number;
  /** How often readiness is polled after `up` (default 500 ms). */
  pollMs?: number;
  /** Where mounts are read from (default /proc/self/mountinfo). */
  mountinfo?: string;
  onDeploy?: (service: string, result: DeployResult) => void;
  /** With `verify = "commits"`: whether the newest commit judged verified. */
  onVerify?: (service: string, ok: boolean) => void;
  /** Every configured service name: the compose policy keeps each project's names out of the others'. */
  projects?: readonly string[];
  /** The engine's volumes and networks with their projects, for the compose policy. */
  engineNames?: () => Promise<EngineNames>;
  /** The engine's swarm state, for services with `engine = "swarm"` (default: its socket). */
  swarm?: SwarmApi;
  /** Desired and running replicas of a swarm service's stack, whenever pgod looks. */
  onReplicas?: (service: string, replicas: Replicas[]) => void;
}

/** One deploy attempt's outcome, with when it started and its history id. */
interface Attempt {
  code: number;
  why: string;
  gone?: boolean;
  aborted?: boolean;
  started: number;
  id: string;
}

/** The policy verdict on a compose tree (null: it may be deployed), and whether a pull has work. */
interface Assessment {
  why: string | null;
  pulls: boolean;
  /** The policy's reasons, located in the compose file. */
  findings?: Finding[];
}

/** The reconcile loop of one service. */
export class ServiceWorker {
  readonly lock = new Mutex();
  private readonly log: Logger;
  private readonly checkout: string;
  private readonly stopFile: string;
  private head: string | null = null;
  private deployedOnce = false;
  /** The last deploy failed while the Docker engine did not answer: deploy again next cycle. */
  private retryDeploy = false;
  private expected: string[] = [];
  private stoppedByFile = false;
  private prepared = false;
  private pending: Trigger | null = null;
  private wake: (() => void) | null = null;
  private readonly abort = new AbortController();
  private loop: Promise<void> | null = null;
  private st: ServiceStatus;
  private keyCache: { commit: string; keys: PublicKey[] } | null = null;
  private reloadDue = false;
  /** A commit refused by the policy; not evaluated again until a newer one arrives. */
  private refused: string | null = null;
  private refusal: string | null = null;
  /** state.json (good, bad, pin, hold, verified) and the history. */
  private readonly record: ServiceRecord;
  /** Cycles in a row that failed to reach the remote or to deploy. */
  private failStreak = 0;
  /** Polls of an HTTP(S) remote go in-process until it answers in a way that is not git's. */
  private httpRefs = true;
  /** The verdict on a commit evaluated just before the checkout moved to it, for the deploy that follows. */
  private assessed: { commit: string } & Assessment | null = null;
  /** The commit moveTo put the checkout at during this cycle (the deploy that follows need not again). */
  private restored: string | null = null;
  /** With `verify = "commits"`: whether the checkout's commit was judged since this worker started. */
  private trustChecked = false;
  /** The last stack file made for a swarm service. */
  private stackPlan: StackPlan | null = null;
  /** Decrypted values seen lately: redacted from every message pgod writes or sends. */
  private secretValues: string[] = [];

  constructor(readonly svc: ServiceConfig, private readonly d: ReconcileDeps) {
    this.log = d.logger.with({ service: svc.name });
    this.checkout = join(d.dir, svc.name);
    this.stopFile = join(d.dir, `${svc.name}.stop`);
    this.st = {
      name: svc.name, commit: null, deployedAt: null, lastResult: null, lastError: null,
      stopFile: false, nextPollAt: null, lastPollAt: null, hold: null,
      pinned: null, good: null, bad: null, refused: null,
    };
    this.record = new ServiceRecord(join(d.dir, ".state"), svc, this.log);
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
    const s = this.record.state;
    return { ...this.st, hold: s.hold ?? null, pinned: s.pin?.commit ?? null, good: s.good ?? null, bad: s.bad ?? null };
  }

  /** The stop file's path while it exists, else null. */
  async stopFileNow(): Promise<string | null> {
    return (await exists(this.stopFile)) ? this.stopFile : null;
  }

  /** The checkout directory. */
  get dir(): string {
    return this.checkout;
  }

  /** The keys in the checkout's `ssh/` folder, read again whenever the commit changes. */
  async keys(): Promise<PublicKey[]> {
    const commit = this.st.commit;
    if (commit === null) return [];
    if (this.keyCache?.commit !== commit) {
      const keys = await readServiceKeys(this.checkout, { warn: (m) => this.log.warn(m) });
      this.keyCache = { commit, keys };
    }
    return this.keyCache.keys;
  }

  /** The service's age keys: its own identity (made on first use) and the admin's extra ones. */
  private ageKeys(): ReturnType<typeof serviceKeys> {
    return serviceKeys(this.record.dir, this.svc.ageIdentities ?? []);
  }

  /** The age recipient (`age1…`) that this service's encrypted files are made for. */
  async recipient(): Promise<string> {
    return (await this.ageKeys()).recipient;
  }

  private get secretsManifest(): string {
    return join(this.record.dir, "secret-files.json");
  }

  /** The plain files decrypted into the checkout last time (the manifest). */
  private async secretFiles(): Promise<string[]> {
    const previous = await readFile(this.secretsManifest, "utf8").then((t) => JSON.parse(t) as unknown, () => []);
    return Array.isArray(previous) ? previous.filter((p): p is string => typeof p === "string") : [];
  }

  /**
   * Decrypts the encrypted files of `dir` beside themselves (see secrets.ts). For the checkout,
   * the plain files of encrypted files that went away are removed (a manifest remembers them).
   */
  private async decryptInto(a: Account, dir: string): Promise<void> {
    const main = dir === this.checkout;
    const before = main ? await this.secretFiles() : [];
    const r = await decryptTree(dir, await this.ageKeys(), a, before);
    this.secretValues = [...new Set([...this.secretValues, ...r.values])].slice(-1000);
    const now = r.files.map((f) => f.plain);
    if (main && JSON.stringify(now) !== JSON.stringify(before)) await writeFileAtomic(this.secretsManifest, JSON.stringify(now));
    // Plain files are pgod's output, never part of the repository: git does not see them.
    if (main) for (const p of now) await addLineBeneath(gitDirOf(this.checkout), "info/exclude", `/${p}`, { mode: 0o644, owner: a });
    if (r.files.length > 0) this.log.debug("decrypted secrets", { files: r.files.map((f) => f.source).join(","), dir });
  }

  /**
   * The verdict on the newest commit of the branch, what would deploy next (DECISIONS.md #12):
   * fetched now (else the last fetched one) and judged in a stage worktree; the checkout stays.
   */
  async check(): Promise<Verdict> {
    return this.lock.run(async () => {
      const a = await this.d.users.lookup(this.svc.user);
      const git = (this.d.makeGit ?? makeGit)(this.d.runner, a, this.svc.name, this.svc.repository);
      let commit: string | null;
      let stale: string | null = null;
      try {
        commit = await git.fetch(this.checkout, this.svc.branch);
      } catch (e) {
        stale = errorMessage(e);
        commit = (await git.fetchedHead(this.checkout, this.svc.branch)) ?? this.head;
      }
      if (commit === null) throw new Error(`Cannot find a commit of branch "${this.svc.branch}" to judge`);
      const running = this.st.deployedAt !== null ? this.head : null;
      const extra = { ...(stale !== null ? { stale } : {}), ...(this.record.state.pin ? { pinned: this.record.state.pin.commit } : {}) };
      // With verify, a commit that does not verify would not deploy, whatever its compose file says.
      if (this.svc.verify && !this.record.mayRun(commit)) {
        const v = await this.judgeSignature(git, commit);
        if (!v.ok) return { commit, branch: this.svc.branch, running, refusal: `not verified: ${describe(v)}`, findings: [], ...extra };
      }
      const kept = this.assessed; // a verdict for the deploy that follows a cycle's evaluation, not this one's
      const r = await this.evaluateCommit(git, a, commit).finally(() => (this.assessed = kept));
      if (r.why !== null) this.st.refused = { commit, reason: r.why };
      else if (this.st.refused?.commit !== commit) this.st.refused = null;
      // A commit that was rolled back passes the policy but does not deploy again either.
      const bad = r.why === null && commit === this.record.state.bad && commit !== this.head
        ? `Commit ${commit.slice(0, 12)} was rolled back after a failed deploy; it is not tried again until a newer commit arrives`
        : null;
      const warnings = this.svc.engine === "swarm" ? await this.swarmWarnings(git, commit) : [];
      return {
        commit, branch: this.svc.branch, running, refusal: r.why ?? bad, findings: r.findings ?? [], ...extra,
        ...(warnings.length > 0 ? { warnings } : {}),
      };
    });
  }


  /** The keys of `commit`'s compose file (as written) that `docker stack deploy` leaves out. */
  private async swarmWarnings(git: Git, commit: string): Promise<string[]> {
    const found = await composeFileAt((p) => git.show(this.checkout, commit, p), this.svc.compose);
    if (found?.text == null) return [];
    try {
      screenYaml(found.text, found.file);
      return stackWarnings(parseYaml(found.text));
    } catch {
      return []; // the verdict itself says what is wrong with the file
    }
  }

  /** Sets or clears the pgoctl hold; it is kept in state.json so that it survives a restart. */
  setHold(hold: Hold | null): Promise<void> {
    return this.record.setHold(hold);
  }

  /**
   * Pulls and brings the project up now, streaming compose's output; call it inside `exclusive`.
   * Returns compose's exit status. `services` limits it to those compose services.
   */
  async deployNow(trigger: Trigger, io: DeployIO = {}, services: string[] = [], autoRollback = true, keepBad = false): Promise<number> {
    const a = await this.d.users.lookup(this.svc.user);
    const say = (text: string): unknown => io.onStderr?.(new TextEncoder().encode(`${text}\n`));
    // Judge what runs: compose reads the checkout as the commit has it, whatever a container wrote
    // (unless this very cycle just put it there).
    if (this.head !== null && this.restored !== this.head) await this.moveTo(a, this.head);
    this.restored = null;
    // The commit was evaluated a moment ago, before the checkout moved to it: once is enough.
    const fresh = this.assessed !== null && this.assessed.commit === this.head ? this.assessed : null;
    this.assessed = null;
    if (this.svc.verify && this.head !== null && !this.record.mayRun(this.head)) {
      // Only a checkout whose trust root is unknown holds an unverified commit: pgoctl up must not run it.
      const why = `not verified: commit ${this.head.slice(0, 12)} has not been verified (verify = "commits")`;
      await say(`Refused: ${why}`);
      await this.refuse(this.head, trigger, why, "unverified");
      return 65;
    }
    let { why: verdict, pulls } = fresh ?? await this.assess(a, this.checkout);
    if (fresh !== null && verdict === null) {
      // Judged in the stage worktree: the checkout gets the same plain files before up.
      await this.decryptInto(a, this.checkout).catch((e: unknown) => {
        verdict = errorMessage(e);
      });
    }
    if (verdict !== null) {
      await say(`Refused: ${verdict}`);
      await this.refuse(this.head ?? "unknown", trigger, verdict);
      return 65;
    }
    if (await exists(this.stopFile)) {
      // The administrator's switch wins over every way up (pgoctl, webhook, a retry).
      const why = `Cannot deploy "${this.svc.name}": the stop file "${this.stopFile}" exists`;
      await say(why);
      this.st.lastError = why;
      return 75;
    }
    let attempt = await this.attempt(a, io, services, pulls, trigger);
    // A container removed while the deploy settles says nothing about the commit: up again, twice at most.
    for (let retry = 1; attempt.gone && retry <= 2 && !this.abort.signal.aborted; retry++) {
      await this.recordDeploy(false, trigger, attempt.started, attempt.id, `${attempt.why}: trying again`);
      await say(`${attempt.why}: trying again`);
      attempt = await this.attempt(a, io, services, pulls, trigger);
    }
    const started = attempt.started;
    if (attempt.code === 0) {
      await this.recordDeploy(true, trigger, started, attempt.id, null);
      // A newer commit that deploys well ends the wait for a fix; the rollback itself does not,
      // nor does the good commit brought up again (at a restart, or after its containers went),
      // nor an older commit brought back by `pgoctl rollback` (keepBad).
      const fixed = !keepBad && trigger !== "rollback" && this.head !== this.record.state.good;
      if (this.head) await this.record.update({ good: this.head }, fixed ? ["bad"] : []);
      await this.reloadProxy(a);
      return 0;
    }
    await say(attempt.why);
    if (attempt.aborted || attempt.gone) {
      // pgod stopping, or containers removed again and again: nothing said about the commit;
      // no rollback, and the next cycle (or the next start) deploys it again.
      this.retryDeploy = true;
      await this.recordDeploy(false, trigger, started, attempt.id, attempt.why, attempt.aborted ? "interrupted" : "failed");
      return attempt.code;
    }
    if (!(await this.engineAnswers())) {
      // An engine that went away says nothing about the commit: no rollback, and the same deploy
      // is tried again at the next cycle, even if old containers come back with the engine.
      this.retryDeploy = true;
      await this.recordDeploy(false, trigger, started, attempt.id, `${attempt.why}: the Docker engine is not answering`);
      return attempt.code;
    }
    const bad = this.head;
    const good = this.record.state.good;
    if (bad === null || good === undefined || good === bad || !autoRollback || !this.record.mayRun(good)) {
      await this.recordDeploy(false, trigger, started, attempt.id, attempt.why);
      return attempt.code;
    }
    // Roll back: the last commit that deployed well goes back up, and the bad one is not retried
    // until a newer commit arrives.
    await say(`Rolling back to ${good.slice(0, 12)}`);
    this.log.error("deploy failed, rolling back", { commit: bad.slice(0, 12), to: good.slice(0, 12), reason: attempt.why });
    await this.record.update({ bad });
    await this.record.record({ commit: bad, time: started, trigger, result: "rolled back", durationMs: this.d.clock.now() - started, detail: attempt.why, id: attempt.id });
    this.d.onDeploy?.(this.svc.name, "rolled back");
    await this.moveTo(a, good);
    this.head = good;
    this.st.commit = good;
    const code = await this.deployNow("rollback", io, services, false);
    if (code !== 0) {
      // The last good commit fails as well: the fault lies outside the new commit (an engine
      // going away, say), so it is not held against it and the next cycle tries it again.
      await this.record.update({}, ["bad"]);
      this.log.warn("the rollback failed too: the new commit will be tried again", { commit: bad.slice(0, 12) });
      this.st.lastError = `Commit ${bad.slice(0, 12)} failed (${attempt.why}), and so did rolling back to ${good.slice(0, 12)}`;
      return code;
    }
    this.st.lastResult = "rolled back";
    this.st.lastError = `Commit ${bad.slice(0, 12)} failed (${attempt.why}); rolled back to ${good.slice(0, 12)}`;
    this.refusal = this.st.lastError;
    return code === 0 ? 1 : code;
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
    const a = await this.d.users.lookup(this.svc.user);
    const git = (this.d.makeGit ?? makeGit)(this.d.runner, a, this.svc.name, this.svc.repository);
    let target: string | null = null;
    if (rev !== null) {
      target = await git.resolveCommit(this.checkout, rev);
      if (target === null) throw new RollbackError("unknown commit", `Cannot find commit "${rev}" in the checkout`);
    } else {
      const earlier = (await this.record.history()).filter((e) => e.result === "deployed" && e.commit !== this.head && this.record.mayRun(e.commit));
      target = earlier.at(-1)?.commit ?? null;
      if (target === null) throw new RollbackError("nothing earlier", "Cannot roll back: no earlier commit deployed well");
    }
    if (!this.record.mayRun(target)) {
      throw new RollbackError("unverified", `Cannot roll back to ${target.slice(0, 12)}: it did not verify when it was deployed (verify = "commits")`);
    }
    const verdict = (await this.evaluateCommit(git, a, target)).why;
    if (verdict !== null) {
      await io.onStderr?.(new TextEncoder().encode(`Refused: ${verdict}\n`));
      return 65;
    }
    await this.moveTo(a, target);
    this.head = target;
    this.st.commit = target;
    await this.pin(target);
    return this.deployNow("pgoctl", io, [], false, true);
  }

  /** Fetches now and deploys if something changed (one cycle, in turn with the loop). */
  async syncNow(): Promise<ServiceStatus> {
    await this.lock.run(() => this.cycle("pgoctl"));
    return this.status();
  }

  /** One deploy attempt: logged and written to the history when it starts, then brought up. */
  private async attempt(a: Account, io: DeployIO, services: string[], pulls: boolean, trigger: Trigger): Promise<Attempt> {
    const started = this.d.clock.now();
    const id = randomBytes(6).toString("hex");
    this.log.info("deploying", { commit: this.head?.slice(0, 12), trigger });
    await this.record.record({ commit: this.head ?? "unknown", time: started, trigger, result: "started", durationMs: 0, id });
    return { ...(await this.bringUp(a, io, services, pulls)), started, id };
  }

  /**
   * Puts the checkout at exactly `commit`, cleaned of everything untracked and ignored (what a
   * container wrote), then writes pgod's own import file again: what compose reads next is the
   * commit's bytes and pgod's, nothing else.
   */
  private async moveTo(a: Account, commit: string): Promise<void> {
    const git = (this.d.makeGit ?? makeGit)(this.d.runner, a, this.svc.name, this.svc.repository);
    const keep = this.svc.import !== undefined ? [`/${posix.normalize(this.svc.import)}`] : [];
    try {
      await restoreCheckout({ checkout: this.checkout, branch: this.svc.branch, commit, keep }, a, git, this.d.runner);
    } catch (e) {
      // A checkout that cannot be restored (a full disk: git cannot write its index) may still be
      // exactly the commit already; then what compose reads is what was judged, and self-healing
      // must not wait for disk space. Anything else is an error.
      const plain = await this.secretFiles();
      const ours = [...keep, ...plain.map((p) => `/${p}`)];
      const dotGit = await lstat(join(this.checkout, ".git")).then(() => true, () => false);
      if (dotGit || !(await git.pristine(this.checkout, commit, ours))) throw e;
      this.log.warn("cannot restore the checkout, but it is exactly the commit: going on", { commit: commit.slice(0, 12), error: errorMessage(e) });
    }
    await this.writeImport(a);
    this.restored = commit;
  }

  /** Puts the checkout back to the commit that runs (see moveTo); call it inside `exclusive`. */
  async restoreNow(): Promise<void> {
    if (this.head === null) return;
    const a = await this.d.users.lookup(this.svc.user);
    await this.moveTo(a, this.head);
    // The clean took the plain files of encrypted ones too: compose needs them back.
    await this.decryptInto(a, this.checkout);
  }

  /** Pull and up (with registry logins), then wait until the containers run and are healthy. */
  private async bringUp(a: Account, io: DeployIO, services: string[], pulls = true): Promise<{ code: number; why: string; gone?: boolean; aborted?: boolean }> {
    const c = this.compose(a, this.composeFile());
    const started = Date.now();
    try {
      await this.ensureData(a);
      const code = await this.d.slots.run(() =>
        c.withRegistries(this.svc.registries, async () => {
          // Skipped only when every image is built or has pull_policy never: it would do nothing.
          const pull = pulls ? await c.run(["pull", "--quiet", "--ignore-buildable", ...services], io) : null;
          if (pull && pull.exitCode !== 0) this.log.warn("pull failed, trying up with the images present", { error: tail(pull.stderr) });
          const up = await c.run(["up", "--detach", "--remove-orphans", "--quiet-pull", ...services], io);
          if (up.exitCode === 0) this.expected = await c.services();
          return up.exitCode;
        })
      );
      if (code !== 0) return { code, why: `${this.svc.engine === "swarm" ? "docker stack deploy" : "docker compose up"} exited with status ${code}` };
    } catch (e) {
      // A failed registry login or mount: compose never ran.
      return { code: 1, why: errorMessage(e) };
    }
    // The engine may go away while containers start: a failed attempt like any other.
    const waitFor = services.length > 0 ? services : this.expected;
    const wait = this.svc.engine === "swarm" ? this.waitStack(waitFor, started) : waitSettled({
      project: this.svc.name, expected: waitFor, containers: this.d.containers,
      clock: this.d.clock, timeoutMs: this.svc.healthTimeoutMs, signal: this.abort.signal,
      ...(this.d.settleMs !== undefined ? { settleMs: this.d.settleMs } : {}), ...(this.d.pollMs !== undefined ? { pollMs: this.d.pollMs } : {}),
    });
    const r = await wait.catch((e: unknown): Settled => ({ state: "failed", why: errorMessage(e) }));
    if (r.state === "ready") return { code: 0, why: "" };
    return { code: 1, why: r.why, gone: r.state === "gone", aborted: r.state === "aborted" };
  }

  /** Whether the Docker engine answers (a list of this project's containers). */
  private engineAnswers(): Promise<boolean> {
    return this.d.containers.ofProject(this.svc.name).then(() => true, () => false);
  }

  /** Pulls images now (with registry logins), streaming compose's output; call it inside `exclusive`. */
  async pullNow(io: DeployIO = {}, services: string[] = []): Promise<number> {
    const a = await this.d.users.lookup(this.svc.user);
    const c = this.compose(a, this.composeFile());
    try {
      return await c.withRegistries(this.svc.registries, async () =>
        (await c.run(["pull", "--ignore-buildable", ...services], io)).exitCode
      );
    } catch (e) {
      await io.onStderr?.(new TextEncoder().encode(`${errorMessage(e)}\n`));
      return 1;
    }
  }

  /** Mounts the NFS share on the data directory when it is configured and not mounted yet. */
  private async ensureData(a: Account): Promise<void> {
    if (!this.svc.mount) return;
    const target = join(this.d.datadir, this.svc.name);
    try {
      if (await ensureMounted(this.svc.name, this.svc.mount, target, { runner: this.d.runner, stateDir: join(this.d.dir, ".state"), ...(this.d.mountinfo ? { mountinfo: this.d.mountinfo } : {}) })) {
        this.log.info("mounted the data share", { dir: target });
      }
    } catch (e) {
      throw new Error(`Cannot mount the data share on "${target}": ${errorMessage(e)}`);
    }
    void a;
  }

  /**
   * Writes the Caddy import file into this service's checkout when its content differs, and
   * marks a reload as due. Only the service that sets `import` does this.
   */
  private async writeImport(a: Account): Promise<void> {
    if (this.svc.import === undefined || this.d.importText === undefined) return;
    if (await writeImportFile(this.checkout, this.svc.import, this.d.importText, a)) {
      this.log.info("wrote the Caddy import file", { file: this.svc.import });
      this.reloadDue = true;
    }
  }

  /** Runs the `reload` command when the import file changed; a failure is retried next cycle. */
  private async reloadProxy(a: Account): Promise<void> {
    if (!this.reloadDue || !this.svc.reload) return;
    const c = this.compose(a, this.composeFile());
    const r = await c.run(["exec", "-T", this.svc.reload.container, ...this.svc.reload.argv], { timeoutMs: 120_000 });
    if (r.exitCode === 0) {
      this.reloadDue = false;
      this.log.info("reloaded the proxy", { container: this.svc.reload.container });
    } else {
      this.log.warn("proxy reload failed, retrying next cycle", { container: this.svc.reload.container, status: r.exitCode, error: tail(r.stderr) });
    }
  }


  private async recordDeploy(ok: boolean, trigger: Trigger, started: number, id: string, error: string | null, result: "failed" | "interrupted" = "failed"): Promise<void> {
    if (!ok) this.log.warn(result === "interrupted" ? "deploy interrupted" : "deploy failed", { commit: this.head?.slice(0, 12), trigger, reason: error ?? "" });
    await this.record.record({
      commit: this.head ?? "unknown", time: started, trigger, result: ok ? "deployed" : result,
      durationMs: this.d.clock.now() - started, ...(error ? { detail: error } : {}), id,
    });
    this.st.lastResult = ok ? "deployed" : "failed";
    this.d.onDeploy?.(this.svc.name, this.st.lastResult);
    if (!ok) {
      this.st.lastError = error;
      return;
    }
    this.deployedOnce = true;
    this.retryDeploy = false;
    this.refusal = null;
    this.st.deployedAt = this.d.clock.now();
    this.st.lastError = null;
    this.log.info("deployed", { commit: this.head?.slice(0, 12), trigger, ms: this.d.clock.now() - started });
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
    this.assessed = null;
    this.restored = null;
    try {
      const account = await this.d.users.lookup(this.svc.user);
      const git = (this.d.makeGit ?? makeGit)(this.d.runner, account, this.svc.name, this.svc.repository);
      if (!this.prepared) {
        for (const e of await this.record.closeInterrupted(this.d.clock.now())) {
          this.log.warn("a deploy attempt was cut short when pgod last stopped", { commit: e.commit.slice(0, 12), trigger: e.trigger });
        }
        await this.record.migrate();
        await this.prepare(account);
        this.prepared = true;
      }
      let deploy = !this.deployedOnce || this.retryDeploy;
      if (this.head === null) {
        this.head = await this.ensureCheckout(account, git);
        this.st.commit = this.head;
        deploy = true;
        this.trustChecked = false; // a fresh clone holds the branch's newest commit, not a verified one
      }
      if (this.svc.verify && !this.trustChecked) {
        await this.trustCheckout(git);
        this.trustChecked = true;
      }
      if (await exists(this.stopFile)) {
        this.st.stopFile = true;
        if (!this.stoppedByFile) {
          this.log.info("stop file present, bringing the service down", { file: this.stopFile });
          await this.down(account);
          this.stoppedByFile = true;
          this.st.lastResult = "stopped";
          this.d.onDeploy?.(this.svc.name, "stopped");
        }
        this.st.lastError = null;
        return;
      }
      this.st.stopFile = false;
      if (this.stoppedByFile) {
        this.log.info("stop file removed, bringing the service up");
        this.stoppedByFile = false;
        deploy = true;
      }
      // A push (webhook) or a `pgoctl sync` says the remote moved: fetch at once, no ls-remote first.
      const followError = await this.follow(git, account, trigger === "start" || trigger === "poll").then((changed) => {
        if (changed) deploy = true;
        return null;
      }, async (e: unknown) => {
        // Keep the checkout and the running containers; try again next cycle. A checkout that
        // itself broke (its .git removed or damaged) is cloned again at the next cycle.
        if ((await git.head(this.checkout)) === null) {
          this.log.warn("checkout is damaged, cloning it again at the next cycle", { dir: this.checkout });
          this.head = null;
        } else {
          this.log.warn("cannot follow the remote, keeping what runs", { error: errorMessage(e) });
        }
        return errorMessage(e);
      });
      if (!deploy && this.record.hold === null) {
        const running = this.svc.engine === "swarm"
          ? await this.stackPresent()
          : allRunning(this.expected, await this.d.containers.ofProject(this.svc.name));
        if (!running) {
          this.log.warn("containers missing or not running, bringing them up");
          deploy = true;
        }
      }
      await this.writeImport(account);
      if (deploy && this.record.hold === null) await this.deploy(trigger);
      else if (this.record.hold === null) await this.reloadProxy(account);
      this.st.lastError = followError ?? this.refusal;
      this.failStreak = followError === null ? 0 : this.failStreak + 1;
    } catch (e) {
      this.st.lastError = errorMessage(e);
      this.failStreak++;
      this.log.error("cycle failed", { trigger, error: errorMessage(e) });
    } finally {
      this.restored = null;
    }
  }

  /** Makes the data directory and the private DOCKER_CONFIG directory. */
  private async prepare(a: Account): Promise<void> {
    const data = join(this.d.datadir, this.svc.name);
    try {
      await mkdir(data, { recursive: true });
      await chown(data, a.uid, a.gid);
      await chmod(data, 0o750);
    } catch (e) {
      // It may be an NFS mount that root cannot chown; the service can still run.
      this.log.warn("cannot prepare data directory", { dir: data, error: errorMessage(e) });
    }
    // The shared parent must be traversable (not listable) by every service user: a recursive
    // mkdir with mode 0700 would make it root's alone and hide each user's own directory.
    // Each service's registry credentials then sit in a directory only its user can read.
    await sharedParent(dirname(this.dockerConfig));
    await privateDir(this.dockerConfig, a);
    // The service's age identity exists from the first start, so a team can ask for its recipient.
    await this.ageKeys();
  }

  private get dockerConfig(): string {
    return join(this.d.dir, ".docker", this.svc.name);
  }

  /** Clones when the checkout is missing or damaged; returns HEAD. A failed fetch never gets here. */
  private async ensureCheckout(a: Account, git: Git): Promise<string> {
    await ensureGitDirs(this.checkout);
    const want = remoteAccess(this.svc.repository).url;
    if (existsSync(this.checkout)) {
      const s = await lstat(this.checkout);
      if (s.isDirectory() && s.uid !== a.uid) {
        await chownTree(this.checkout, a, this.d.runner);
      }
      if (s.isDirectory() && (await migrateGitDir(this.checkout, want, a, this.d.runner))) {
        this.log.info("moved the git directory out of the checkout", { dir: gitDirOf(this.checkout) });
      }
      const head = s.isDirectory() && existsSync(gitDirOf(this.checkout)) ? await git.head(this.checkout) : null;
      if (head !== null) {
        // The stored URL holds no credentials (remoteAccess); one stored by an older pgod loses them here.
        const url = await git.remoteUrl(this.checkout);
        if (url !== want) await git.setRemoteUrl(this.checkout, want);
        return head;
      }
      this.log.warn("checkout is damaged, cloning again", { dir: this.checkout });
    }
    // The clone goes to <tmp>/<name> with its git directory in <tmp>/.gitdirs/<name> (gitDirOf), both
    // the user's; then each moves to its place.
    const tmp = join(this.d.dir, `.clone-${this.svc.name}-${process.pid}-${Math.floor(this.d.random() * 1e9)}`);
    const work = join(tmp, this.svc.name);
    await this.removeTree(tmp);
    await privateDir(tmp, a);
    await privateDir(work, a);
    await privateDir(join(tmp, GITDIRS), a);
    try {
      await this.d.slots.run(() => git.clone(work, this.svc.repository, this.svc.branch));
      for (const [from, to] of [[gitDirOf(work), gitDirOf(this.checkout)], [work, this.checkout]] as const) {
        if (existsSync(to)) {
          const trash = join(this.d.dir, `.trash-${this.svc.name}-${process.pid}`);
          await this.removeTree(trash);
          await rename(to, trash);
          await rename(from, to);
          await this.removeTree(trash);
        } else {
          await rename(from, to);
        }
      }
    } finally {
      await this.removeTree(tmp);
    }
    const head = await git.head(this.checkout);
    if (head === null) throw new Error(`Cannot read HEAD of the fresh clone of "${this.svc.repository}"`);
    this.log.info("cloned", { commit: head.slice(0, 12), branch: this.svc.branch });
    return head;
  }

  /**
   * Removes a tree a container may still be writing (an old checkout): coreutils' rm, which never
   * follows a symlink swapped in meanwhile, and stays on this file system.
   */
  private async removeTree(path: string): Promise<void> {
    if (!existsSync(path)) return;
    await this.d.runner(["rm", "-rf", "--one-file-system", "--", path], { env: { PATH: CHILD_PATH } });
  }

  /**
   * Follows the remote branch. Returns whether the compose model's files changed. With `probe`,
   * an `ls-remote` first saves the fetch when nothing moved.
   */
  private async follow(git: Git, a: Account, probe = true): Promise<boolean> {
    if (this.record.state.pin) return false; // pinned by `pgoctl rollback`: no automatic pulls
    const head = this.head!;
    const skip = (c: string): boolean => {
      // A branch moved back to what runs (an unverified push undone) has nothing left unverified.
      if (c === head && this.st.unverified !== undefined) this.verifiedHead();
      return c === head || c === this.refused || c === this.record.state.bad;
    };
    if (probe && skip(await this.remoteHead(git, a))) return false;
    const fetched = await git.fetch(this.checkout, this.svc.branch);
    if (skip(fetched)) return false;
    if (this.svc.verify && !(await this.verifies(git, fetched, "poll"))) return false;
    const relevant = await this.relevantChange(git, head, fetched);
    if (relevant) {
      // DECISIONS.md #2: a new compose model is evaluated before the checkout moves to it.
      const verdict = (await this.evaluateCommit(git, a, fetched)).why;
      if (verdict !== null) {
        this.refused = fetched;
        await this.refuse(fetched, "poll", verdict);
        return false;
      }
    }
    await this.moveTo(a, fetched);
    this.head = fetched;
    this.st.commit = fetched;
    if (this.svc.verify) await this.record.markVerified(fetched);
    this.refused = null;
    this.refusal = null;
    this.st.refused = null;
    this.log.info("new commit", { from: head.slice(0, 12), to: fetched.slice(0, 12), redeploy: relevant });
    return relevant;
  }

  /**
   * The commit the remote branch points at: asked in-process over smart HTTP when the remote is
   * an HTTP(S) one that speaks it, or over SSH as the service's user (src/ssh_refs.ts), so no
   * process is started; else with `git ls-remote`. git stays the authority: a failed in-process
   * request (other than a timeout) is asked again through it.
   */
  private async remoteHead(git: Git, a: Account): Promise<string> {
    if (isSshRemote(this.svc.repository)) {
      try {
        const id = await (this.d.sshRefs ?? sshAdvertisedHead)(this.svc.repository, this.svc.branch, a, { timeoutMs: Math.min(NET_TIMEOUT_MS, 30_000), checkout: this.checkout });
        this.log.debug("polled the remote", { via: "ssh", commit: id.slice(0, 12) });
        return id;
      } catch (e) {
        if (e instanceof RemoteTimeout) throw e;
        this.log.debug("asking the remote over ssh in-process failed: asking git", { reason: errorMessage(e) });
      }
    }
    if (this.httpRefs && isHttpRemote(this.svc.repository)) {
      try {
        const id = await (this.d.remoteRefs ?? advertisedHead)(this.svc.repository, this.svc.branch, { timeoutMs: Math.min(NET_TIMEOUT_MS, 30_000) });
        this.log.debug("polled the remote", { via: "http", commit: id.slice(0, 12) });
        return id;
      } catch (e) {
        if (e instanceof RemoteTimeout) throw e;
        if (e instanceof UnsupportedRemote) {
          this.httpRefs = false;
          this.log.info("the remote does not speak smart HTTP: polling it with git ls-remote", { reason: e.message });
        } else {
          this.log.debug("asking the remote over HTTP failed: asking git", { error: errorMessage(e) });
        }
      }
    }
    return git.remoteHead(this.checkout, this.svc.branch);
  }

  /** Evaluates `commit` in a worktree beside the checkout (same depth, so relative symlinks resolve alike). */
  private async evaluateCommit(git: Git, a: Account, commit: string): Promise<Assessment> {
    const stage = join(this.d.dir, `.stage-${this.svc.name}`);
    await rm(stage, { recursive: true, force: true });
    await privateDir(stage, a);
    try {
      await git.addWorktree(this.checkout, stage, commit);
      const r = await this.assess(a, stage);
      this.assessed = r.why === null ? { commit, ...r } : null;
      return r;
    } finally {
      await git.removeWorktree(this.checkout, stage).catch(() => {});
      await rm(stage, { recursive: true, force: true });
    }
  }

  /**
   * The policy verdict on the compose files in `dir`: null when they may be deployed, else why
   * not; and whether `docker compose pull` would have anything to do. Every file is screened (size, aliases, symlinks out of the repository) before docker
   * compose reads it; for a service that does not run as root the model docker compose resolves
   * is then checked against the sandbox rules.
   */
  private async assess(a: Account, dir: string): Promise<Assessment> {
    // Encrypted files become plain ones before compose reads anything, in the tree judged.
    try {
      await this.decryptInto(a, dir);
    } catch (e) {
      if (e instanceof SecretError) return { why: e.message, pulls: true };
      throw e;
    }
    const file = findComposeFile((f) => existsSync(join(dir, f)), this.svc.compose);
    if (file === null) {
      return { why: `Cannot find a compose file: looked for ${this.svc.compose !== undefined ? `"${this.svc.compose}"` : COMPOSE_FILES.map((f) => `"${f}"`).join(", ")}`, pulls: true };
    }
    // Asked outside the verdict: an engine that does not answer fails this cycle, which is
    // retried, instead of refusing the commit for good.
    const existing = this.svc.user !== "root" && this.d.engineNames ? await this.d.engineNames() : undefined;
    try {
      if (this.svc.user === "root") return { why: null, pulls: (await screenComposeTree(dir, file)).pulls };
      const model = await composeModel(this.d.runner, {
        project: this.svc.name, dir, file, account: a, env: this.svc.env, dockerConfig: this.dockerConfig,
      }, this.d.composeCgroup ? { cgroupDir: this.d.composeCgroup } : {});
      const v = evaluatePolicy(model, {
        project: this.svc.name, repoDir: dir, dataDir: join(this.d.datadir, this.svc.name),
        ...(this.svc.networks ? { networks: this.svc.networks } : {}),
        ...(this.svc.checkoutBinds ? { checkoutBinds: this.svc.checkoutBinds } : {}),
        ...(this.svc.loggingDrivers ? { loggingDrivers: this.svc.loggingDrivers } : {}),
        ...(this.d.projects ? { projects: this.d.projects } : {}),
        ...(existing ? { existing } : {}),
      });
      if (v.length === 0) return { why: null, pulls: pullsImages(model) };
      const findings = locateFindings(dir, file, v).map((f) => ({
        ...f, reason: redact(f.reason, this.secretValues), ...(f.value !== undefined ? { value: redact(f.value, this.secretValues) } : {}),
      }));
      return { why: redact(formatViolations(file, v), this.secretValues), pulls: pullsImages(model), findings };
    } catch (e) {
      return { why: redact(errorMessage(e), this.secretValues), pulls: true };
    }
  }

  /** Records a refused compose file (or unverified commit): log, status, metric and history; what runs keeps running. */
  private async refuse(commit: string, trigger: Trigger, why: string, result: "refused" | "unverified" = "refused"): Promise<void> {
    this.refusal = `Refused commit ${commit.slice(0, 12)}: ${why}`;
    this.st.lastError = this.refusal;
    this.st.lastResult = result;
    this.st.refused = { commit, reason: why };
    this.log.error(result === "refused" ? "compose file refused, keeping what runs" : "commit not verified, keeping what runs", { commit: commit.slice(0, 12), trigger, reason: why });
    this.d.onDeploy?.(this.svc.name, result);
    await this.record.record({ commit, time: this.d.clock.now(), trigger, result: result === "refused" ? "refused by policy" : "unverified", durationMs: 0, detail: why });
  }


  /**
   * Judges `commit` by its signature before the checkout moves to it; records a refusal (result
   * `unverified`) when it does not verify. A trust root unknown to the repository throws.
   */
  private async verifies(git: Git, commit: string, trigger: Trigger): Promise<boolean> {
    const v = await this.judgeSignature(git, commit);
    if (v.ok) {
      this.log.info("commit verified", { commit: commit.slice(0, 12), signer: v.signer ?? "trust root" });
      this.verifiedHead();
      return true;
    }
    this.d.onVerify?.(this.svc.name, false);
    this.refused = commit;
    this.st.unverified = describe(v);
    await this.refuse(commit, trigger, `not verified: ${describe(v)}`, "unverified");
    return false;
  }

  /** The signature verdict on `commit` (src/signatures.ts), from the last verified commit or the trust root. */
  private async judgeSignature(git: Git, commit: string): Promise<Awaited<ReturnType<typeof judgeCommit>>> {
    const anchor = this.record.anchor();
    try {
      return await judgeCommit(git, this.checkout, {
        anchor, commit, warn: (m) => this.log.warn(m), writeSigners: signersWriter(join(this.d.dir, ".signers", `${this.svc.name}.allowed`)),
      }, anchor === this.svc.trustRoot ? "trust_root" : "the last verified commit");
    } catch (e) {
      if (e instanceof UnknownTrustRoot) {
        throw new Error(`Cannot deploy "${this.svc.name}": ${e.message}, so no commit can be verified; nothing is deployed until "trust_root" names a commit of the branch`);
      }
      throw e;
    }
  }

  /** The newest commit of the branch verified (or is what runs): nothing is held for its signature. */
  private verifiedHead(): void {
    delete this.st.unverified;
    this.d.onVerify?.(this.svc.name, true);
  }


  /**
   * Judges the checkout's commit once per start (after a clone, or when `verify` was just turned
   * on): one that does not verify is replaced by the last verified commit, or the trust root.
   */
  private async trustCheckout(git: Git): Promise<void> {
    const head = this.head!;
    if (this.record.mayRun(head)) return;
    if (await this.verifies(git, head, "start")) {
      await this.record.markVerified(head);
      return;
    }
    const anchor = this.record.anchor();
    this.log.warn("the checkout's commit does not verify: checking out the last verified commit", { commit: head.slice(0, 12), to: anchor.slice(0, 12) });
    await git.checkout(this.checkout, this.svc.branch, anchor);
    this.head = anchor;
    this.st.commit = anchor;
  }

  /** The deploy history's file (`pgoctl history` reads it). */
  get historyFile(): string {
    return this.record.historyFile;
  }


  private async relevantChange(git: Git, from: string, to: string): Promise<boolean> {
    const changed = await git.changedFiles(this.checkout, from, to);
    if (changed.length === 0) return false;
    for (const commit of [from, to]) {
      // Each file once: finding the compose file and reading its dependencies both ask for it.
      const shown = new Map<string, Promise<string | null>>();
      const read = (p: string): Promise<string | null> => {
        if (!shown.has(p)) shown.set(p, git.show(this.checkout, commit, p));
        return shown.get(p)!;
      };
      const found = await composeFileAt(read, this.svc.compose);
      if (found === null) continue;
      const deps = await composeDependencies(read, found.file);
      if (deps === "all" || changed.some((p) => deps.has(p) || deps.has(plainName(p)?.plain ?? p))) return true;
    }
    return false;
  }

  private compose(a: Account, file: string): Compose {
    const target = { project: this.svc.name, dir: this.checkout, file, account: a, env: this.svc.env, dockerConfig: this.dockerConfig };
    if (this.svc.engine !== "swarm") return makeCompose(this.d.runner, target);
    return makeSwarm(this.d.runner, target, {
      api: this.swarmApi,
      ...(this.d.composeCgroup ? { cgroupDir: this.d.composeCgroup } : {}),
      onPlan: (plan) => {
        this.stackPlan = plan;
        for (const w of plan.warnings) this.log.warn("left out of the stack", { detail: w });
      },
    });
  }

  private get swarmApi(): SwarmApi {
    return (this.d.swarm ??= makeSwarmApi(dockerSocket()));
  }

  /** What the last stack deploy left out (keys stack deploy ignores), for `check`. */
  get stackWarnings(): string[] {
    return this.stackPlan?.warnings ?? [];
  }

  /** Whether every swarm service of the stack exists (Swarm heals tasks itself); sets the replica metrics. */
  private async stackPresent(): Promise<boolean> {
    const services = await this.swarmApi.services(this.svc.name);
    const tasks = await this.swarmApi.tasks(services.map((s) => s.ID));
    const r = stackReadiness(this.svc.name, this.expected, services, tasks, 0);
    this.d.onReplicas?.(this.svc.name, r.replicas);
    const names = new Set(services.map((s) => s.Spec.Name));
    return this.expected.length > 0 ? this.expected.every((e) => names.has(`${this.svc.name}_${e}`)) : services.length > 0;
  }

  /** Waits until the stack converged (see stackReadiness), with the loop compose waits use. */
  private waitStack(expected: string[], since: number): Promise<Settled> {
    return settleLoop({
      clock: this.d.clock, timeoutMs: this.svc.healthTimeoutMs, signal: this.abort.signal,
      ...(this.d.settleMs !== undefined ? { settleMs: this.d.settleMs } : {}), ...(this.d.pollMs !== undefined ? { pollMs: this.d.pollMs } : {}),
    }, `not converged after ${Math.round(this.svc.healthTimeoutMs / 1000)}s`, async () => {
      const services = await this.swarmApi.services(this.svc.name);
      const r = stackReadiness(this.svc.name, expected, services, await this.swarmApi.tasks(services.map((s) => s.ID)), since);
      this.d.onReplicas?.(this.svc.name, r.replicas);
      return r;
    });
  }

  /** The compose file in the checkout, or an error naming what was looked for. */
  composeFile(): string {
    const file = findComposeFile((f) => existsSync(join(this.checkout, f)), this.svc.compose);
    if (file === null) {
      const looked = this.svc.compose !== undefined ? `"${this.svc.compose}"` : COMPOSE_FILES.map((f) => `"${f}"`).join(", ");
      throw new Error(`Cannot find a compose file in "${this.checkout}": looked for ${looked}`);
    }
    return file;
  }

  /** Composes a target for commands from pgoctl. */
  async composeFor(): Promise<Compose> {
    const a = await this.d.users.lookup(this.svc.user);
    return this.compose(a, this.composeFile());
  }

  private async deploy(trigger: Trigger): Promise<void> {
    const errors: Uint8Array[] = [];
    const code = await this.deployNow(trigger, { onStderr: (c) => void (errors.length < 64 && errors.push(c)) });
    if (code !== 0) {
      // deployNow recorded why (a failed login or mount never reached compose); add compose's words.
      const said = redact(tail(Buffer.concat(errors).toString("utf8")), this.secretValues);
      const why = this.st.lastError ?? `docker compose up exited with status ${code}`;
      const msg = said && !why.includes(said) ? `${why}: ${said}` : why;
      this.st.lastError = msg;
      throw new Error(msg);
    }
  }


  private async down(a: Account): Promise<void> {
    let file: string | null = null;
    try {
      file = this.composeFile();
    } catch {
      // No compose file: compose can still find the project's containers by its labels.
    }
    if (file) await this.compose(a, file).must(["down", "--remove-orphans"]);
    else if (this.svc.engine === "swarm") await removeStack(this.d.runner, this.svc.name, baseEnv(a), a);
    else await downProject(this.d.runner, this.svc.name, baseEnv(a), a);
  }
}

async function sharedParent(path: string): Promise<void> {
  await mkdir(path, { recursive: true });
  await chmod(path, 0o711);
}

async function privateDir(path: string, a: Account): Promise<void> {
  await mkdir(path, { recursive: true, mode: 0o700 });
  await chown(path, a.uid, a.gid);
  await chmod(path, 0o700);
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (e) {
    // Anything but "not there" (permission denied, say) counts as present: the safe side.
    return (e as NodeJS.ErrnoException).code !== "ENOENT";
  }
}

function tail(s: string): string {
  return s.trim().split("\n").slice(-3).join(" | ");
}
