/** The git CLI, run as the service user with a fixed environment and a timeout on every call. */
import { dirname } from "node:path";
import type { Runner, Tag } from "./exec.ts";
import type { Account } from "./users.ts";
import { baseEnv } from "./users.ts";

/**
 * How long a network command (clone, ls-remote, fetch) may take before its process group is
 * killed. PGO_GIT_TIMEOUT_MS, read once at start, shortens it: a knob for tests of hanging
 * remotes, not a setting for users.
 */
export const NET_TIMEOUT_MS: number = netTimeout(process.env["PGO_GIT_TIMEOUT_MS"]);
const LOCAL_TIMEOUT_MS = 30_000;

/** Git operations on one service's checkout. */
export interface Git {
  /** Clones `branch` of `repo` into the empty directory `dir`. */
  clone(dir: string, repo: string, branch: string): Promise<void>;
  /** The commit the remote branch points at, in one round trip (`git ls-remote`). */
  remoteHead(dir: string, branch: string): Promise<string>;
  /** Fetches the branch; returns the fetched commit. Force-pushes are followed. */
  fetch(dir: string, branch: string): Promise<string>;
  /** The commit the last fetch brought for the branch, or null when there is none. */
  fetchedHead(dir: string, branch: string): Promise<string | null>;
  /** The commit checked out, or null when the checkout is damaged. */
  head(dir: string): Promise<string | null>;
  /** Paths that differ between two commits (`git diff --name-only -z`). */
  changedFiles(dir: string, from: string, to: string): Promise<string[]>;
  /** A file's content at a commit, or null when it does not exist there. */
  show(dir: string, commit: string, path: string): Promise<string | null>;
  /** Moves the checkout to `commit` on `branch`, discarding local edits and untracked files. */
  checkout(dir: string, branch: string, commit: string): Promise<void>;
  /** Checks `commit` out into the empty directory `path`, as a detached worktree of `dir`. */
  addWorktree(dir: string, path: string, commit: string): Promise<void>;
  /** Removes a worktree made by addWorktree (and its directory). */
  removeWorktree(dir: string, path: string): Promise<void>;
  /** The full id of a commit named by `rev` (an id or a prefix of one), or null. */
  resolveCommit(dir: string, rev: string): Promise<string | null>;
  /** The configured remote URL. */
  remoteUrl(dir: string): Promise<string | null>;
  setRemoteUrl(dir: string, url: string): Promise<void>;
  /** Whether `ancestor` is `commit` or one of its ancestors (`git merge-base --is-ancestor`). */
  isAncestor(dir: string, ancestor: string, commit: string): Promise<boolean>;
  /** The raw commit object (`git cat-file commit`): its headers, a signature among them, and message. */
  commitObject(dir: string, commit: string): Promise<string>;
  /** The entries of folder `folder` of a commit's tree (`git ls-tree --long`), from the object store. */
  listTree(dir: string, commit: string, folder: string): Promise<TreeEntry[]>;
  /**
   * Checks a commit's SSH signature against an allowed-signers file (`git verify-commit` with
   * `gpg.format=ssh`, i.e. `ssh-keygen -Y verify`): whether it is good, and git's words.
   */
  verifyCommit(dir: string, commit: string, allowedSigners: string): Promise<{ good: boolean; output: string }>;
}

/** One entry of a tree listing. */
export interface TreeEntry {
  mode: string;
  type: string;
  /** The blob's size in bytes; -1 for other types. */
  size: number;
  /** The path from the top of the repository. */
  path: string;
}

/**
 * An http(s) URL without its user information, and that information as the value of a Basic
 * `Authorization` header (null when the URL has none); null for other or unparsable URLs.
 */
export function httpCredentials(url: string): { bare: string; authorization: string | null } | null {
  if (!/^https?:\/\//i.test(url)) return null;
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return null;
  }
  if (u.username === "" && u.password === "") return { bare: u.toString(), authorization: null };
  const secret = Buffer.from(`${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}`).toString("base64");
  u.username = "";
  u.password = "";
  return { bare: u.toString(), authorization: `Basic ${secret}` };
}

/**
 * A remote URL without its secret, and the secret as git config passed in the environment:
 * credentials in an http(s) URL become an `Authorization` header for that URL only, so they are
 * in no argv (which every user of the machine can read in /proc) and not in the checkout's
 * .git/config. Other URLs are returned as they are.
 */
export function remoteAccess(url: string): { url: string; env: Record<string, string> } {
  const c = httpCredentials(url);
  if (c === null || c.authorization === null) return { url, env: {} };
  return {
    url: c.bare,
    env: { GIT_CONFIG_COUNT: "1", GIT_CONFIG_KEY_0: `http.${c.bare}.extraHeader`, GIT_CONFIG_VALUE_0: `Authorization: ${c.authorization}` },
  };
}

/**
 * Makes the git wrapper for one service (the tag labels metrics); `repository` is the remote the
 * checkout follows, whose credentials (see remoteAccess) go with every call.
 */
export function makeGit(runner: Runner, account: Account, service: string, repository?: string): Git {
  const access = repository !== undefined ? remoteAccess(repository).env : {};
  const env = {
    ...baseEnv(account),
    ...access,
    GIT_CONFIG_NOSYSTEM: "1",
    GIT_TERMINAL_PROMPT: "0",
    GIT_ASKPASS: "/bin/false",
    GIT_SSH_COMMAND: "ssh -o BatchMode=yes -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4",
    // Abort transfers that stall below 1 KB/s for 60 s (a server that accepts and never answers).
    GIT_HTTP_LOW_SPEED_LIMIT: "1000",
    GIT_HTTP_LOW_SPEED_TIME: "60",
  };
  const tag = (subcmd: string): Tag => ({ service, cmd: "git", subcmd });
  // GIT_CEILING_DIRECTORIES: a checkout whose .git is gone must not find a repository above it.
  const git = async (dir: string, args: string[], subcmd: string, timeoutMs = LOCAL_TIMEOUT_MS, check = true) =>
    runner(["git", ...args], {
      cwd: dir, env: { ...env, GIT_CEILING_DIRECTORIES: dirname(dir) }, as: account, timeoutMs, tag: tag(subcmd), check,
    });
  return {
    async clone(dir, repo, branch) {
      const r = remoteAccess(repo);
      await runner(["git", "clone", "--quiet", "--branch", branch, "--", r.url, "."], {
        cwd: dir, env: { ...env, ...r.env, GIT_CEILING_DIRECTORIES: dirname(dir) }, as: account, timeoutMs: NET_TIMEOUT_MS, tag: tag("clone"),
      });
    },
    async remoteHead(dir, branch) {
      const r = await git(dir, ["ls-remote", "--heads", "origin", `refs/heads/${branch}`], "ls-remote", NET_TIMEOUT_MS);
      const id = r.stdout.split(/\s/)[0] ?? "";
      if (!/^[0-9a-f]{40,64}$/.test(id)) throw new Error(`Cannot find branch "${branch}" on the remote`);
      return id;
    },
    async fetch(dir, branch) {
      const ref = `refs/remotes/origin/${branch}`;
      await git(dir, ["fetch", "--quiet", "--no-tags", "origin", `+refs/heads/${branch}:${ref}`], "fetch", NET_TIMEOUT_MS);
      const r = await git(dir, ["rev-parse", "--verify", "--quiet", `${ref}^{commit}`], "rev-parse");
      return r.stdout.trim();
    },
    async fetchedHead(dir, branch) {
      const r = await git(dir, ["rev-parse", "--verify", "--quiet", `refs/remotes/origin/${branch}^{commit}`], "rev-parse", LOCAL_TIMEOUT_MS, false);
      const id = r.stdout.trim();
      return r.exitCode === 0 && /^[0-9a-f]{40,64}$/.test(id) ? id : null;
    },
    async head(dir) {
      const r = await git(dir, ["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], "rev-parse", LOCAL_TIMEOUT_MS, false);
      const id = r.stdout.trim();
      return r.exitCode === 0 && /^[0-9a-f]{40,64}$/.test(id) ? id : null;
    },
    async changedFiles(dir, from, to) {
      const r = await git(dir, ["diff", "--no-renames", "--name-only", "-z", from, to], "diff");
      return r.stdout.split("\0").filter((p) => p !== "");
    },
    async show(dir, commit, path) {
      const r = await git(dir, ["cat-file", "blob", `${commit}:${path}`], "cat-file", LOCAL_TIMEOUT_MS, false);
      return r.exitCode === 0 ? r.stdout : null;
    },
    async checkout(dir, branch, commit) {
      await git(dir, ["-c", "advice.detachedHead=false", "checkout", "--quiet", "--force", "-B", branch, commit], "checkout");
      await git(dir, ["clean", "--quiet", "-d", "--force"], "clean");
    },
    async addWorktree(dir, path, commit) {
      await git(dir, ["worktree", "prune"], "worktree");
      await git(dir, ["-c", "advice.detachedHead=false", "worktree", "add", "--quiet", "--detach", "--force", path, commit], "worktree");
    },
    async removeWorktree(dir, path) {
      const r = await git(dir, ["worktree", "remove", "--force", path], "worktree", LOCAL_TIMEOUT_MS, false);
      // A worktree removed well is gone from the list too: prune only after a failure.
      if (r.exitCode !== 0) await git(dir, ["worktree", "prune"], "worktree", LOCAL_TIMEOUT_MS, false);
    },
    async resolveCommit(dir, rev) {
      if (!/^[0-9a-f]{4,64}$/.test(rev)) return null;
      const r = await git(dir, ["rev-parse", "--verify", "--quiet", `${rev}^{commit}`], "rev-parse", LOCAL_TIMEOUT_MS, false);
      const id = r.stdout.trim();
      return r.exitCode === 0 && /^[0-9a-f]{40,64}$/.test(id) ? id : null;
    },
    async remoteUrl(dir) {
      const r = await git(dir, ["config", "--get", "remote.origin.url"], "config", LOCAL_TIMEOUT_MS, false);
      return r.exitCode === 0 ? r.stdout.trim() : null;
    },
    async setRemoteUrl(dir, url) {
      await git(dir, ["remote", "set-url", "origin", url], "remote");
    },
    async isAncestor(dir, ancestor, commit) {
      const r = await git(dir, ["merge-base", "--is-ancestor", ancestor, commit], "merge-base", LOCAL_TIMEOUT_MS, false);
      if (r.exitCode === 0) return true;
      if (r.exitCode === 1) return false;
      throw new Error(`Cannot compare commits ${ancestor.slice(0, 12)} and ${commit.slice(0, 12)}: ${r.stderr.trim() || `git exited with status ${r.exitCode}`}`);
    },
    async commitObject(dir, commit) {
      return (await git(dir, ["cat-file", "commit", commit], "cat-file")).stdout;
    },
    async listTree(dir, commit, folder) {
      const r = await git(dir, ["ls-tree", "-z", "--long", commit, "--", `${folder}/`], "ls-tree");
      const out: TreeEntry[] = [];
      for (const rec of r.stdout.split("\0")) {
        const m = /^(\d+) (\w+) [0-9a-f]+ +(-|\d+)\t(.*)$/s.exec(rec);
        if (m) out.push({ mode: m[1]!, type: m[2]!, size: m[3] === "-" ? -1 : Number(m[3]), path: m[4]! });
      }
      return out;
    },
    async verifyCommit(dir, commit, allowedSigners) {
      // The program and the files are fixed here, and no global git config of the user is read:
      // a repository or a home directory cannot point the check elsewhere.
      const r = await runner([
        "git", "-c", "gpg.format=ssh", "-c", "gpg.ssh.program=ssh-keygen", "-c", `gpg.ssh.allowedSignersFile=${allowedSigners}`,
        "verify-commit", commit,
      ], {
        cwd: dir, env: { ...env, GIT_CONFIG_GLOBAL: "/dev/null", GIT_CEILING_DIRECTORIES: dirname(dir) }, as: account,
        timeoutMs: LOCAL_TIMEOUT_MS, tag: tag("verify-commit"), check: false,
      });
      return { good: r.exitCode === 0, output: `${r.stdout}${r.stderr}`.trim() };
    },
  };
}

/** The network timeout: 120 s, or a positive whole number of ms from `value`. */
export function netTimeout(value: string | undefined): number {
  const n = Number(value);
  return value !== undefined && /^[1-9][0-9]*$/.test(value) && Number.isSafeInteger(n) ? n : 120_000;
}
