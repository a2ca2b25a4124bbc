/**
 * The git CLI, run as the service user (without the `docker` group) with a fixed environment and
 * a timeout on every call. The git directory of a checkout `<dir>/<name>` lives outside it, in
 * `<dir>/.gitdirs/<name>`, where no container can mount it; every call names both explicitly, so
 * a `.git` written into the checkout is never read, and settings that run programs are overridden.
 */
import { rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import type { Runner, Tag } from "./exec.ts";
import type { Account } from "./users.ts";
import { baseEnv } from "./child_env.ts";
import { withoutDocker } from "./users.ts";

/**
 * How long a network command (clone, ls-remote, fetch) may take before its process group is
 * killed. PGO_GIT_TIMEOUT_MS, read once at start, shortens it: a knob for tests of hanging
 * remotes, not a setting for users.
 */
export const NET_TIMEOUT_MS: number = netTimeout(process.env["PGO_GIT_TIMEOUT_MS"]);
const LOCAL_TIMEOUT_MS = 30_000;

/** The directory under `<dir>` that holds the git directories of the checkouts in `<dir>`. */
export const GITDIRS = ".gitdirs";

/** The git directory of the work tree `checkout`: `<parent>/.gitdirs/<basename>`. */
export function gitDirOf(checkout: string): string {
  return join(dirname(checkout), GITDIRS, basename(checkout));
}

/**
 * Config given on the command line of every git call; it wins over the repository's own. Each
 * key names a program git would otherwise run, or a file it would otherwise read, from config.
 * Where git takes the first value and not the last (`remote.<name>.uploadpack`), the command line
 * names it instead (`--upload-pack`). The environment (safeEnv) covers the rest: GIT_SSH_COMMAND beats core.sshCommand,
 * GIT_ASKPASS core.askPass, GIT_PROXY_COMMAND core.gitProxy, GIT_PAGER/GIT_EDITOR the pager and
 * editor.
 */
export const SAFE_CONFIG: readonly string[] = [
  "core.hooksPath=/dev/null",
  "core.fsmonitor=false",
  "core.attributesFile=/dev/null",
  "core.excludesFile=/dev/null",
  "credential.helper=",
  "protocol.ext.allow=never",
  "fetch.recurseSubmodules=false",
  "submodule.recurse=false",
  "gc.autoDetach=false",
];

/** The program a local or SSH remote runs to send objects, whatever the repository's config says. */
const UPLOAD_PACK = "git-upload-pack";

/**
 * `env` with `pairs` added as config through GIT_CONFIG_COUNT/KEY_n/VALUE_n (numbered after any
 * already there): like `git -c`, it wins over every config file, and it keeps argv readable.
 */
export function withConfig(env: Record<string, string>, pairs: readonly string[]): Record<string, string> {
  const out = { ...env };
  let n = Number(out["GIT_CONFIG_COUNT"] ?? "0");
  for (const p of pairs) {
    const eq = p.indexOf("=");
    out[`GIT_CONFIG_KEY_${n}`] = p.slice(0, eq);
    out[`GIT_CONFIG_VALUE_${n}`] = p.slice(eq + 1);
    n++;
  }
  out["GIT_CONFIG_COUNT"] = String(n);
  return out;
}

/** The environment of every git child: no system or global config, no program taken from config. */
export function safeEnv(account: Account): Record<string, string> {
  return {
    ...baseEnv(account),
    GIT_CONFIG_NOSYSTEM: "1",
    GIT_CONFIG_GLOBAL: "/dev/null",
    GIT_ATTR_NOSYSTEM: "1",
    GIT_TERMINAL_PROMPT: "0",
    GIT_ASKPASS: "/bin/false",
    SSH_ASKPASS: "/bin/false",
    GIT_PAGER: "cat",
    PAGER: "cat",
    GIT_EDITOR: "false",
    GIT_SEQUENCE_EDITOR: "false",
    GIT_PROXY_COMMAND: "",
    GIT_SSH_COMMAND: "ssh -o BatchMode=yes -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4",
    // Abort transfers that stall below 1 KB/s for 60 s (a server that accepts and never answers).
    GIT_HTTP_LOW_SPEED_LIMIT: "1000",
    GIT_HTTP_LOW_SPEED_TIME: "60",
  };
}

/** Git operations on one service's checkout (its git directory is gitDirOf(dir)). */
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
  /**
   * Moves the checkout to `commit` on `branch`, discarding local edits and every untracked and
   * ignored file, except the paths in `keep` (anchored at the top, like `/caddy/import`).
   */
  checkout(dir: string, branch: string, commit: string, keep?: readonly string[]): Promise<void>;
  /**
   * Whether the work tree already is exactly `commit`: HEAD there, nothing modified, untracked or
   * ignored but the paths in `keep`. Read-only (no index refresh is written), so it answers on a
   * full disk, where checkout cannot.
   */
  pristine(dir: string, commit: string, keep?: readonly string[]): Promise<boolean>;
  /**
   * Writes the tree of `commit` into the empty directory `path` (through an index of its own,
   * so neither the checkout nor its index moves, and no `.git` is written into `path`).
   */
  addWorktree(dir: string, path: string, commit: string): Promise<void>;
  /** Forgets what addWorktree kept for `path` (its index); the caller removes the directory. */
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
  const safe = withConfig(safeEnv(account), SAFE_CONFIG);
  const env = withConfig(safe, configPairs(access));
  // Git needs the user's own groups to reach its files, never `docker` (root on the host).
  const as = withoutDocker(account);
  const tag = (subcmd: string): Tag => ({ service, cmd: "git", subcmd });
  // GIT_DIR and GIT_WORK_TREE name both, so a `.git` in the work tree is never looked at;
  // GIT_CEILING_DIRECTORIES: nothing above it is ever taken for a repository either.
  const where = (work: string): Record<string, string> => ({
    GIT_DIR: gitDirOf(work), GIT_WORK_TREE: work, GIT_CEILING_DIRECTORIES: dirname(work),
  });
  const git = async (dir: string, args: string[], subcmd: string, timeoutMs = LOCAL_TIMEOUT_MS, check = true) =>
    runner(["git", ...args], { cwd: dir, env: { ...env, ...where(dir) }, as, timeoutMs, tag: tag(subcmd), check });
  const stageIndex = (dir: string, path: string): string => join(gitDirOf(dir), `pgo-index-${basename(path)}`);
  return {
    async clone(dir, repo, branch) {
      const r = remoteAccess(repo);
      // No templates (no sample hooks either); the `.git` file clone leaves in the work tree goes.
      await runner(["git", "clone", "--quiet", "--template=", `--upload-pack=${UPLOAD_PACK}`, `--separate-git-dir=${gitDirOf(dir)}`, "--branch", branch, "--", r.url, "."], {
        cwd: dir, env: { ...withConfig(safe, configPairs(r.env)), GIT_CEILING_DIRECTORIES: dirname(dir) }, as, timeoutMs: NET_TIMEOUT_MS, tag: tag("clone"),
      });
      await runner(["rm", "-f", "--", join(dir, ".git")], { env: baseEnv(account), as, tag: tag("clone") });
    },
    async remoteHead(dir, branch) {
      const r = await git(dir, ["ls-remote", "--heads", `--upload-pack=${UPLOAD_PACK}`, "origin", `refs/heads/${branch}`], "ls-remote", NET_TIMEOUT_MS);
      const id = r.stdout.split(/\s/)[0] ?? "";
      if (!/^[0-9a-f]{40,64}$/.test(id)) throw new Error(`Cannot find branch "${branch}" on the remote`);
      return id;
    },
    async fetch(dir, branch) {
      const ref = `refs/remotes/origin/${branch}`;
      await git(dir, ["fetch", "--quiet", "--no-tags", `--upload-pack=${UPLOAD_PACK}`, "origin", `+refs/heads/${branch}:${ref}`], "fetch", NET_TIMEOUT_MS);
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
      const r = await git(dir, ["diff", "--no-ext-diff", "--no-textconv", "--no-renames", "--name-only", "-z", from, to], "diff");
      return r.stdout.split("\0").filter((p) => p !== "");
    },
    async show(dir, commit, path) {
      const r = await git(dir, ["cat-file", "blob", `${commit}:${path}`], "cat-file", LOCAL_TIMEOUT_MS, false);
      return r.exitCode === 0 ? r.stdout : null;
    },
    async checkout(dir, branch, commit, keep = []) {
      await git(dir, ["-c", "advice.detachedHead=false", "checkout", "--quiet", "--force", "-B", branch, commit], "checkout");
      // -x: ignored files go too; -ff: nested repositories too. Only `keep` stays.
      await git(dir, ["clean", "--quiet", "-d", "-x", "--force", "--force", ...keep.flatMap((k) => ["-e", k])], "clean");
    },
    async pristine(dir, commit, keep = []) {
      if ((await this.head(dir)) !== commit) return false;
      const r = await runner(["git", "status", "--porcelain=v1", "-z", "--ignored", "--untracked-files=all"], {
        cwd: dir, env: { ...env, ...where(dir), GIT_OPTIONAL_LOCKS: "0" }, as, timeoutMs: LOCAL_TIMEOUT_MS, tag: tag("status"), check: false,
      });
      if (r.exitCode !== 0) return false;
      const kept = new Set(keep.map((k) => k.replace(/^\//, "")));
      return r.stdout.split("\0").filter((e) => e !== "").every((e) => kept.has(e.slice(3)));
    },
    async addWorktree(dir, path, commit) {
      const stageEnv = { ...env, GIT_DIR: gitDirOf(dir), GIT_WORK_TREE: path, GIT_CEILING_DIRECTORIES: dirname(path), GIT_INDEX_FILE: stageIndex(dir, path) };
      const stage = async (args: string[], subcmd: string) =>
        runner(["git", ...args], { cwd: path, env: stageEnv, as, timeoutMs: LOCAL_TIMEOUT_MS, tag: tag(subcmd) });
      await stage(["read-tree", commit], "read-tree");
      await stage(["checkout-index", "--all", "--force"], "checkout-index");
    },
    async removeWorktree(dir, path) {
      // An unlink: it removes a symlink put there, never what it points to.
      await rm(stageIndex(dir, path), { force: true });
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
        cwd: dir, env: { ...env, ...where(dir) }, as,
        timeoutMs: LOCAL_TIMEOUT_MS, tag: tag("verify-commit"), check: false,
      });
      return { good: r.exitCode === 0, output: `${r.stdout}${r.stderr}`.trim() };
    },
  };
}

/** The `key=value` pairs of config that remoteAccess put in an environment. */
function configPairs(env: Record<string, string>): string[] {
  const out: string[] = [];
  for (let i = 0; i < Number(env["GIT_CONFIG_COUNT"] ?? "0"); i++) out.push(`${env[`GIT_CONFIG_KEY_${i}`]}=${env[`GIT_CONFIG_VALUE_${i}`]}`);
  return out;
}

/** The network timeout: 120 s, or a positive whole number of ms from `value`. */
export function netTimeout(value: string | undefined): number {
  const n = Number(value);
  return value !== undefined && /^[1-9][0-9]*$/.test(value) && Number.isSafeInteger(n) ? n : 120_000;
}
