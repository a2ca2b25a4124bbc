/**
 * A checkout and its git directory, kept apart: the work tree `<dir>/<name>` (which a container
 * may bind and write) and the git directory `<dir>/.gitdirs/<name>` (gitDirOf), which no
 * container can reach. Moving a legacy `.git` out, and putting the work tree back to exactly a
 * commit before anything reads it.
 */
import { constants } from "node:fs";
import { chmod, chown, lstat, mkdir, open, rename } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { Runner } from "./exec.ts";
import { writeFileBeneath } from "./files.ts";
import type { Git } from "./git.ts";
import { gitDirOf } from "./git.ts";
import type { Account } from "./users.ts";
import { baseEnv } from "./child_env.ts";
import { withoutDocker } from "./users.ts";

/** What a legacy `.git` keeps when it moves out: data only (no config, hooks, info, worktrees). */
const MOVED = ["objects", "refs", "packed-refs", "HEAD"] as const;

/**
 * Makes `<dir>/.gitdirs`: root's, 0711, so each service user reaches its own git directory (0700,
 * its own) and lists no other.
 */
export async function ensureGitDirs(checkout: string): Promise<void> {
  const parent = dirname(gitDirOf(checkout));
  await mkdir(parent, { recursive: true });
  await chown(parent, 0, 0);
  await chmod(parent, 0o711);
}

/**
 * Moves the git directory of a checkout made by an older pgod (`<checkout>/.git`) out to
 * gitDirOf(checkout); returns whether it did. Whatever a container may have written there is
 * left behind: only objects, refs and HEAD move, into a new directory with a config written here
 * (remote `url`), no hooks and no info. A `.git` that is not a plain directory moves nothing.
 */
export async function migrateGitDir(checkout: string, url: string, a: Account, runner: Runner): Promise<boolean> {
  const legacy = join(checkout, ".git");
  const target = gitDirOf(checkout);
  const st = await lstat(legacy).catch(() => null);
  if (st === null || !st.isDirectory() || (await lstat(target).catch(() => null)) !== null) return false;
  if (/[\n\r\0]/.test(url)) return false;
  const format = await objectFormat(join(legacy, "config"));
  await ensureGitDirs(checkout);
  await mkdir(target, { mode: 0o700 });
  // Held open, and each entry reached through it: a `.git` swapped for a symlink meanwhile
  // cannot make pgod move some other directory's files here.
  const dir = await open(legacy, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  try {
    for (const name of MOVED) {
      const from = `/proc/self/fd/${dir.fd}/${name}`;
      const s = await lstat(from).catch(() => null);
      // A symlink among them would make git read (and write) elsewhere: it stays behind.
      if (s === null || s.isSymbolicLink()) continue;
      await rename(from, join(target, name));
    }
  } finally {
    await dir.close();
  }
  const config = [
    "[core]",
    `\trepositoryformatversion = ${format === "sha256" ? 1 : 0}`,
    "\tfilemode = true",
    "\tbare = false",
    "\tlogallrefupdates = true",
    ...(format === "sha256" ? ["[extensions]", "\tobjectformat = sha256"] : []),
    '[remote "origin"]',
    `\turl = "${url.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`,
    "\tfetch = +refs/heads/*:refs/remotes/origin/*",
    "",
  ].join("\n");
  await writeFileBeneath(target, "config", config, { mode: 0o600, owner: a });
  // What moved may belong to whoever wrote it (a container's root): it becomes the user's.
  await chownTree(target, a, runner);
  await chmod(target, 0o700);
  // The rest of the old .git goes with the user's rights, never root's.
  await removeDotGit(checkout, a, runner);
  return true;
}

/** The object format named in a legacy config (read without following a symlink), "sha1" by default. */
async function objectFormat(file: string): Promise<string> {
  try {
    const fh = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    try {
      const buf = Buffer.alloc(64 * 1024);
      const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
      return /^\s*objectformat\s*=\s*sha256\s*$/im.test(buf.subarray(0, bytesRead).toString("utf8")) ? "sha256" : "sha1";
    } finally {
      await fh.close();
    }
  } catch {
    return "sha1";
  }
}

/** Removes a `.git` entry in the work tree (git never cleans one), as the service user. */
export async function removeDotGit(checkout: string, a: Account, runner: Runner): Promise<void> {
  if ((await lstat(join(checkout, ".git")).catch(() => null)) === null) return;
  await runner(["rm", "-rf", "--one-file-system", "--", join(checkout, ".git")], { env: baseEnv(a), as: withoutDocker(a) });
}

/**
 * Puts the work tree back to exactly `commit`: every file a container changed, added or left
 * ignored (`.env`, symlinks, nested repositories, a `.git`) is gone, except the paths in `keep`
 * (pgod's own generated file, rewritten by the caller). Everything in it first becomes the
 * user's (`chown -R` does not follow symlinks), so that files a container's root wrote there
 * can go too.
 */
export async function restoreCheckout(
  o: { checkout: string; branch: string; commit: string; keep: readonly string[] },
  a: Account,
  git: Git,
  runner: Runner,
): Promise<void> {
  await chownTree(o.checkout, a, runner);
  await removeDotGit(o.checkout, a, runner);
  await git.checkout(o.checkout, o.branch, o.commit, o.keep);
}

/** Gives everything below `path` to the service's user; `chown -R` follows no symlink. */
export async function chownTree(path: string, a: Account, runner: Runner): Promise<void> {
  await runner(["chown", "-R", "--no-dereference", `${a.uid}:${a.gid}`, path], { env: baseEnv(a) });
}
