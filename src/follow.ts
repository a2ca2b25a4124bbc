/**
 * Following a service's branch: ask the remote where it points, fetch, judge the new commit
 * (signature, then compose policy in a stage worktree) and move the checkout to it. Each step
 * returns what it found; the loop (reconcile.ts) decides what follows.
 */
import { join } from "node:path";
import { evaluateCommit } from "./assess.ts";
import { composeDependencies, composeFileAt } from "./compose.ts";
import { errorMessage } from "./errors.ts";
import { NET_TIMEOUT_MS } from "./git.ts";
import type { Git } from "./git.ts";
import { advertisedHead, isHttpRemote, RemoteTimeout, UnsupportedRemote } from "./refs.ts";
import { plainName } from "./secrets.ts";
import type { Assessment, Scope, Trigger, Turn } from "./service.ts";
import { describe, judgeCommit, signersWriter, UnknownTrustRoot } from "./signatures.ts";
import type { SignatureVerdict } from "./signatures.ts";
import { isSshRemote, sshAdvertisedHead } from "./ssh_refs.ts";
import { stackWarnings } from "./swarm_plan.ts";
import type { Verdict } from "./verdict.ts";
import type { Workspace } from "./workspace.ts";
import { screenYaml } from "./yaml_screen.ts";
import { parse as parseYaml } from "yaml";

/** A commit the loop will not judge again until a newer one arrives, and the message it left. */
export interface Refused {
  commit: string;
  message: string;
}

/** What following the branch found. */
export type Followed =
  | { kind: "same" }
  | { kind: "refused"; refused: Refused }
  /** The checkout moved to `head`; `assessment`: its verdict when the compose files changed (judged before the move). */
  | { kind: "moved"; head: string; relevant: boolean; assessment: Assessment | null };

/** The checkout's commit after trustCheckout, and a refusal it recorded. */
export interface Trusted {
  head: string;
  refused?: Refused;
}

/** Follows one service's branch. */
export class Follower {
  /** Polls of an HTTP(S) remote go in-process until it answers in a way that is not git's. */
  private httpRefs = true;

  constructor(private readonly s: Scope, private readonly ws: Workspace) {}

  /**
   * Follows the remote branch from `head`, skipping `skip` (a commit refused before) and the
   * rolled-back commit. With `probe`, an `ls-remote` first saves the fetch when nothing moved.
   */
  async follow(t: Turn, head: string, o: { probe: boolean; skip: string | null }): Promise<Followed> {
    const { s } = this;
    if (s.record.state.pin) return { kind: "same" }; // pinned by `pgoctl rollback`: no automatic pulls
    const skip = (c: string): boolean => {
      // A branch moved back to what runs (an unverified push undone) has nothing left unverified.
      if (c === head && s.status.unverified !== undefined) this.verifiedHead();
      return c === head || c === o.skip || c === s.record.state.bad;
    };
    if (o.probe && skip(await this.remoteHead(t))) return { kind: "same" };
    const fetched = await t.git.fetch(s.checkout, s.svc.branch);
    if (skip(fetched)) return { kind: "same" };
    if (s.svc.verify) {
      const refused = await this.verifies(t.git, fetched, "poll");
      if (refused !== null) return { kind: "refused", refused };
    }
    const relevant = await this.relevantChange(t.git, head, fetched);
    let assessment: Assessment | null = null;
    if (relevant) {
      // DECISIONS.md #2: a new compose model is evaluated before the checkout moves to it.
      const r = await evaluateCommit(s, this.ws, t, fetched);
      if (r.why !== null) return { kind: "refused", refused: await refuse(s, fetched, "poll", r.why) };
      assessment = r;
    }
    await this.ws.moveTo(t, fetched);
    if (s.svc.verify) await s.record.markVerified(fetched);
    s.status.refused = null;
    s.log.info("new commit", { from: head.slice(0, 12), to: fetched.slice(0, 12), redeploy: relevant });
    return { kind: "moved", head: fetched, relevant, assessment };
  }

  /**
   * The verdict on the newest commit of the branch, what would deploy next (DECISIONS.md #12):
   * fetched now (else the last fetched one) and judged in a stage worktree; the checkout stays.
   * `head`: the checkout's commit; `running`: it, when it deployed.
   */
  async check(t: Turn, head: string | null, running: string | null): Promise<Verdict> {
    const { s } = this;
    let commit: string | null;
    let stale: string | null = null;
    try {
      commit = await t.git.fetch(s.checkout, s.svc.branch);
    } catch (e) {
      stale = errorMessage(e);
      commit = (await t.git.fetchedHead(s.checkout, s.svc.branch)) ?? head;
    }
    if (commit === null) throw new Error(`Cannot find a commit of branch "${s.svc.branch}" to judge`);
    const pin = s.record.state.pin;
    const extra = { ...(stale !== null ? { stale } : {}), ...(pin ? { pinned: pin.commit } : {}) };
    const base = { commit, branch: s.svc.branch, running };
    // With verify, a commit that does not verify would not deploy, whatever its compose file says.
    if (s.svc.verify && !s.record.mayRun(commit)) {
      const v = await this.judgeSignature(t.git, commit);
      if (!v.ok) return { ...base, refusal: `not verified: ${describe(v)}`, findings: [], ...extra };
    }
    const r = await evaluateCommit(s, this.ws, t, commit);
    if (r.why !== null) s.status.refused = { commit, reason: r.why };
    else if (s.status.refused?.commit !== commit) s.status.refused = null;
    // A commit that was rolled back passes the policy but does not deploy again either.
    const bad = r.why === null && commit === s.record.state.bad && commit !== head
      ? `Commit ${commit.slice(0, 12)} was rolled back after a failed deploy; it is not tried again until a newer commit arrives`
      : null;
    const warnings = s.svc.engine === "swarm" ? await this.swarmWarnings(t.git, commit) : [];
    return { ...base, refusal: r.why ?? bad, findings: r.findings ?? [], ...extra, ...(warnings.length > 0 ? { warnings } : {}) };
  }

  /**
   * Judges the checkout's commit `head` once per start (after a clone, or when `verify` was just
   * turned on): one that does not verify is replaced by the last verified commit, or the trust root.
   */
  async trustCheckout(git: Git, head: string): Promise<Trusted> {
    const { s } = this;
    if (s.record.mayRun(head)) return { head };
    const refused = await this.verifies(git, head, "start");
    if (refused === null) {
      await s.record.markVerified(head);
      return { head };
    }
    const anchor = s.record.anchor();
    s.log.warn("the checkout's commit does not verify: checking out the last verified commit", { commit: head.slice(0, 12), to: anchor.slice(0, 12) });
    await git.checkout(s.checkout, s.svc.branch, anchor);
    return { head: anchor, refused };
  }

  /**
   * The commit the remote branch points at: asked in-process over smart HTTP when the remote is
   * an HTTP(S) one that speaks it, or over SSH as the service's user (src/ssh_refs.ts), so no
   * process is started; else with `git ls-remote`. git stays the authority: a failed in-process
   * request (other than a timeout) is asked again through it.
   */
  private async remoteHead(t: Turn): Promise<string> {
    const { svc, d, log, checkout } = this.s;
    const timeoutMs = Math.min(NET_TIMEOUT_MS, 30_000);
    if (isSshRemote(svc.repository)) {
      try {
        const id = await (d.sshRefs ?? sshAdvertisedHead)(svc.repository, svc.branch, t.a, { timeoutMs, checkout });
        log.debug("polled the remote", { via: "ssh", commit: id.slice(0, 12) });
        return id;
      } catch (e) {
        if (e instanceof RemoteTimeout) throw e;
        log.debug("asking the remote over ssh in-process failed: asking git", { reason: errorMessage(e) });
      }
    }
    if (this.httpRefs && isHttpRemote(svc.repository)) {
      try {
        const id = await (d.remoteRefs ?? advertisedHead)(svc.repository, svc.branch, { timeoutMs });
        log.debug("polled the remote", { via: "http", commit: id.slice(0, 12) });
        return id;
      } catch (e) {
        if (e instanceof RemoteTimeout) throw e;
        if (e instanceof UnsupportedRemote) {
          this.httpRefs = false;
          log.info("the remote does not speak smart HTTP: polling it with git ls-remote", { reason: e.message });
        } else {
          log.debug("asking the remote over HTTP failed: asking git", { error: errorMessage(e) });
        }
      }
    }
    return t.git.remoteHead(checkout, svc.branch);
  }

  /** Whether the files the compose model reads (at `from` or at `to`) differ between them. */
  private async relevantChange(git: Git, from: string, to: string): Promise<boolean> {
    const { checkout, svc } = this.s;
    const changed = await git.changedFiles(checkout, from, to);
    if (changed.length === 0) return false;
    for (const commit of [from, to]) {
      // Each file once: finding the compose file and reading its dependencies both ask for it.
      const shown = new Map<string, Promise<string | null>>();
      const read = (p: string): Promise<string | null> => {
        let text = shown.get(p);
        if (text === undefined) shown.set(p, (text = git.show(checkout, commit, p)));
        return text;
      };
      const found = await composeFileAt(read, svc.compose);
      if (found === null) continue;
      const deps = await composeDependencies(read, found.file);
      if (deps === "all" || changed.some((p) => deps.has(p) || deps.has(plainName(p)?.plain ?? p))) return true;
    }
    return false;
  }

  /** The keys of `commit`'s compose file (as written) that `docker stack deploy` leaves out. */
  private async swarmWarnings(git: Git, commit: string): Promise<string[]> {
    const found = await composeFileAt((p) => git.show(this.s.checkout, commit, p), this.s.svc.compose);
    if (found?.text == null) return [];
    try {
      screenYaml(found.text, found.file);
      return stackWarnings(parseYaml(found.text));
    } catch {
      return []; // the verdict itself says what is wrong with the file
    }
  }

  /**
   * Judges `commit` by its signature before the checkout moves to it: null when it verifies, else
   * the refusal it recorded (result `unverified`). A trust root unknown to the repository throws.
   */
  private async verifies(git: Git, commit: string, trigger: Trigger): Promise<Refused | null> {
    const { s } = this;
    const v = await this.judgeSignature(git, commit);
    if (v.ok) {
      s.log.info("commit verified", { commit: commit.slice(0, 12), signer: v.signer ?? "trust root" });
      this.verifiedHead();
      return null;
    }
    s.d.onVerify?.(s.svc.name, false);
    s.status.unverified = describe(v);
    return refuse(s, commit, trigger, `not verified: ${describe(v)}`, "unverified");
  }

  /** The signature verdict on `commit` (src/signatures.ts), from the last verified commit or the trust root. */
  private async judgeSignature(git: Git, commit: string): Promise<SignatureVerdict> {
    const { s } = this;
    const anchor = s.record.anchor();
    try {
      return await judgeCommit(git, s.checkout, {
        anchor, commit, warn: (m) => s.log.warn(m), writeSigners: signersWriter(join(s.d.dir, ".signers", `${s.svc.name}.allowed`)),
      }, anchor === s.svc.trustRoot ? "trust_root" : "the last verified commit");
    } catch (e) {
      if (e instanceof UnknownTrustRoot) {
        throw new Error(`Cannot deploy "${s.svc.name}": ${e.message}, so no commit can be verified; nothing is deployed until "trust_root" names a commit of the branch`);
      }
      throw e;
    }
  }

  /** The newest commit of the branch verified (or is what runs): nothing is held for its signature. */
  private verifiedHead(): void {
    delete this.s.status.unverified;
    this.s.d.onVerify?.(this.s.svc.name, true);
  }
}

/**
 * Records a refused compose file (or unverified commit): log, status, metric and history; what
 * runs keeps running. Returns the refusal, whose message stays the status's error until a deploy.
 */
export async function refuse(s: Scope, commit: string, trigger: Trigger, why: string, result: "refused" | "unverified" = "refused"): Promise<Refused> {
  const message = `Refused commit ${commit.slice(0, 12)}: ${why}`;
  s.status.lastError = message;
  s.status.lastResult = result;
  s.status.refused = { commit, reason: why };
  s.log.error(result === "refused" ? "compose file refused, keeping what runs" : "commit not verified, keeping what runs", { commit: commit.slice(0, 12), trigger, reason: why });
  s.d.onDeploy?.(s.svc.name, result);
  await s.record.record({ commit, time: s.d.clock.now(), trigger, result: result === "refused" ? "refused by policy" : "unverified", durationMs: 0, detail: why });
  return { commit, message };
}
