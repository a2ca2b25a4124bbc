/**
 * What the parts of a service's worker share (reconcile.ts sequences them; follow.ts, assess.ts,
 * deploy.ts and workspace.ts do the work): the injected dependencies, the status pgoctl shows,
 * and the account and git a cycle looks up once and passes down.
 */
import { chmod, chown, mkdir, stat } from "node:fs/promises";
import type { ServiceConfig } from "./config.ts";
import type { Containers } from "./containers.ts";
import type { ExecIO } from "./compose.ts";
import type { Runner } from "./exec.ts";
import { makeGit } from "./git.ts";
import type { Git } from "./git.ts";
import type { HistoryTrigger } from "./history.ts";
import type { Logger } from "./log.ts";
import type { EngineNames } from "./policy.ts";
import type { advertisedHead } from "./refs.ts";
import type { Clock, Semaphore } from "./scheduler.ts";
import type { ServiceRecord } from "./service_record.ts";
import type { sshAdvertisedHead } from "./ssh_refs.ts";
import type { Hold } from "./state.ts";
import type { Replicas, SwarmApi } from "./swarm.ts";
import type { Account, Users } from "./users.ts";
import type { Finding } from "./verdict.ts";

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

/** Where `deployNow` sends compose's output: the same callbacks as every compose run. */
export type DeployIO = ExecIO;

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

/** One service's fixed surroundings, shared by the parts of its worker. */
export interface Scope {
  readonly svc: ServiceConfig;
  readonly d: ReconcileDeps;
  readonly log: Logger;
  /** `<dir>/<name>`. */
  readonly checkout: string;
  /** `<dir>/<name>.stop`: while it exists the service stays down. */
  readonly stopFile: string;
  readonly record: ServiceRecord;
  /** What `status` shows; the parts write their outcomes here, none reads another's back. */
  readonly status: ServiceStatus;
  /** Aborted when pgod stops. */
  readonly signal: AbortSignal;
}

/** What a cycle (or a pgoctl command) works with: the account looked up and git built once. */
export interface Turn {
  readonly a: Account;
  readonly git: Git;
}

/** Looks up the service's account and builds its git, once for a cycle or a command. */
export async function makeTurn(s: Scope): Promise<Turn> {
  const a = await s.d.users.lookup(s.svc.user);
  return { a, git: (s.d.makeGit ?? makeGit)(s.d.runner, a, s.svc.name, s.svc.repository) };
}

/** The policy verdict on a compose tree (null: it may be deployed), and whether a pull has work. */
export interface Assessment {
  why: string | null;
  pulls: boolean;
  /** The policy's reasons, located in the compose file. */
  findings?: Finding[];
}

/** Writes a line to a command's stderr. */
export async function say(io: DeployIO, text: string): Promise<void> {
  await io.onStderr?.(new TextEncoder().encode(`${text}\n`));
}

/** A directory only `a` may enter. */
export async function privateDir(path: string, a: Account): Promise<void> {
  await mkdir(path, { recursive: true, mode: 0o700 });
  await chown(path, a.uid, a.gid);
  await chmod(path, 0o700);
}

/** A directory every service user may traverse, not list. */
export async function sharedParent(path: string): Promise<void> {
  await mkdir(path, { recursive: true });
  await chmod(path, 0o711);
}

/** Whether `path` exists; anything but "not there" (permission denied, say) counts as present: the safe side. */
export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== "ENOENT";
  }
}

/** The last three lines of a command's output, on one line. */
export function tail(s: string): string {
  return s.trim().split("\n").slice(-3).join(" | ");
}
