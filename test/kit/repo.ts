/**
 * Git repositories for the tests and the benchmark: a bare remote with a work clone to commit
 * and push from, and git on a checkout pgod made. No bun:test here: the benchmark uses it too.
 */
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { gitDirOf } from "../../src/git.ts";
import { run } from "./process.ts";

/** `git -c` options that name the committer, so commits need no global config. */
export const GIT_IDENTITY: readonly string[] = ["-c", "user.name=t", "-c", "user.email=t@t"];

/** Writes `files` under `dir` (null deletes one; missing folders are made). */
export function writeTree(dir: string, files: Record<string, string | null>): void {
  for (const [path, content] of Object.entries(files)) {
    const full = join(dir, path);
    if (content === null) rmSync(full, { force: true });
    else {
      mkdirSync(dirname(full), { recursive: true });
      writeFileSync(full, content);
    }
  }
}

/** git options that address a checkout pgod made: its git directory lives outside it (gitDirOf). */
export function checkoutGitArgs(checkout: string): string[] {
  return [`--git-dir=${gitDirOf(checkout)}`, `--work-tree=${checkout}`];
}

/** A bare repository (the remote pgod follows) and a work clone to commit from. */
export class Repo {
  private constructor(readonly bare: string, readonly work: string, private readonly trust: string) {}

  /** Makes `<root>/remote.git` and `<root>/work`, and commits and pushes `files` as the first commit. */
  static async create(root: string, files: Record<string, string>): Promise<Repo> {
    const bare = join(root, "remote.git");
    const work = join(root, "work");
    await run(["git", "init", "--quiet", "--bare", "-b", "main", bare]);
    await run(["git", "init", "--quiet", "-b", "main", work]);
    await run(["git", "-C", work, "remote", "add", "origin", bare]);
    // The remote may belong to a service user. git clears GIT_CONFIG_COUNT for git-receive-pack,
    // but a global config file reaches it.
    const trust = join(root, ".gitconfig-trust");
    writeFileSync(trust, "[safe]\n\tdirectory = *\n");
    const repo = new Repo(bare, work, trust);
    await repo.commit(files, "first");
    return repo;
  }

  /** Writes `files` into the work clone (null deletes one). */
  write(files: Record<string, string | null>): void {
    writeTree(this.work, files);
  }

  /**
   * Commits everything in the work clone (with `signingKey`: an SSH signature made with that
   * private key file); returns the new commit id.
   */
  async commitAll(message: string, o: { signingKey?: string } = {}): Promise<string> {
    await run(["git", "-C", this.work, "add", "--all"]);
    const sign = o.signingKey !== undefined ? ["-c", "gpg.format=ssh", "-c", `user.signingkey=${o.signingKey}`] : [];
    await run(["git", ...GIT_IDENTITY, ...sign, "-C", this.work, "commit", "--quiet", ...(sign.length > 0 ? ["-S"] : []), "-m", message]);
    return (await run(["git", "-C", this.work, "rev-parse", "HEAD"])).stdout.trim();
  }

  /** Pushes `commit` (default HEAD) to main, forced with `force`; returns how long the push took (ms). */
  async push(o: { commit?: string; force?: boolean } = {}): Promise<number> {
    const r = await run(["git", "-C", this.work, "push", "--quiet", ...(o.force ? ["--force"] : []), "origin", `${o.commit ?? "HEAD"}:refs/heads/main`], {
      env: { ...process.env, GIT_CONFIG_GLOBAL: this.trust },
    });
    return r.ms;
  }

  /** Writes `files`, commits and pushes to main; returns the new commit id. */
  async commit(files: Record<string, string | null>, message: string, o: { signingKey?: string } = {}): Promise<string> {
    this.write(files);
    const id = await this.commitAll(message, o);
    await this.push();
    return id;
  }

  /** Force-pushes `commit` to main (a rewind, say). */
  async forcePush(commit: string): Promise<void> {
    await this.push({ commit, force: true });
  }
}

/** The commit checked out in `dir` (a checkout pgod made), or null; any owner: the checkout may belong to a service user. */
export async function headOf(dir: string): Promise<string | null> {
  const r = await run(["git", "-c", "safe.directory=*", ...checkoutGitArgs(dir), "rev-parse", "--verify", "--quiet", "HEAD^{commit}"], { check: false });
  return r.code === 0 ? r.stdout.trim() : null;
}
