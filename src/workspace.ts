/**
 * A service's directories as compose reads them: the checkout (cloned, put back at exactly a
 * commit), the plain files of its encrypted ones, the Caddy import file, the data directory and
 * the private DOCKER_CONFIG directory.
 */
import { existsSync } from "node:fs";
import { chmod, chown, lstat, mkdir, readFile, rename } from "node:fs/promises";
import { dirname, join, posix } from "node:path";
import { writeImportFile } from "./caddy.ts";
import { chownTree, ensureGitDirs, migrateGitDir, restoreCheckout } from "./checkout.ts";
import { CHILD_PATH } from "./child_env.ts";
import { COMPOSE_FILES, findComposeFile } from "./compose.ts";
import { errorMessage } from "./errors.ts";
import { addLineBeneath, writeFileAtomic } from "./files.ts";
import { gitDirOf, GITDIRS, remoteAccess } from "./git.ts";
import { decryptTree, redact, serviceKeys } from "./secrets.ts";
import { privateDir, sharedParent } from "./service.ts";
import type { Scope, Turn } from "./service.ts";
import type { Account } from "./users.ts";

/** The checkout and directories of one service. */
export class Workspace {
  /** The Caddy import file changed since the proxy was last reloaded. */
  reloadDue = false;
  /** Decrypted values seen lately: redacted from every message pgod writes or sends. */
  private secretValues: string[] = [];

  constructor(private readonly s: Scope) {}

  /** The private DOCKER_CONFIG directory (registry logins). */
  get dockerConfig(): string {
    return join(this.s.d.dir, ".docker", this.s.svc.name);
  }

  get dataDir(): string {
    return join(this.s.d.datadir, this.s.svc.name);
  }

  /** `text` with every decrypted value seen lately replaced. */
  redact(text: string): string {
    return redact(text, this.secretValues);
  }

  /** Makes the data directory and the private DOCKER_CONFIG directory. */
  async prepare(a: Account): Promise<void> {
    const data = this.dataDir;
    try {
      await mkdir(data, { recursive: true });
      await chown(data, a.uid, a.gid);
      await chmod(data, 0o750);
    } catch (e) {
      // It may be an NFS mount that root cannot chown; the service can still run.
      this.s.log.warn("cannot prepare data directory", { dir: data, error: errorMessage(e) });
    }
    // The shared parent must be traversable (not listable) by every service user: a recursive
    // mkdir with mode 0700 would make it root's alone and hide each user's own directory.
    // Each service's registry credentials then sit in a directory only its user can read.
    await sharedParent(dirname(this.dockerConfig));
    await privateDir(this.dockerConfig, a);
    // The service's age identity exists from the first start, so a team can ask for its recipient.
    await this.ageKeys();
  }

  /** The service's age keys: its own identity (made on first use) and the admin's extra ones. */
  ageKeys(): ReturnType<typeof serviceKeys> {
    return serviceKeys(this.s.record.dir, this.s.svc.ageIdentities ?? []);
  }

  private get secretsManifest(): string {
    return join(this.s.record.dir, "secret-files.json");
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
  async decryptInto(a: Account, dir: string): Promise<void> {
    const main = dir === this.s.checkout;
    const before = main ? await this.secretFiles() : [];
    const r = await decryptTree(dir, await this.ageKeys(), a, before);
    this.secretValues = [...new Set([...this.secretValues, ...r.values])].slice(-1000);
    const now = r.files.map((f) => f.plain);
    if (main && JSON.stringify(now) !== JSON.stringify(before)) await writeFileAtomic(this.secretsManifest, JSON.stringify(now));
    // Plain files are pgod's output, never part of the repository: git does not see them.
    if (main) for (const p of now) await addLineBeneath(gitDirOf(this.s.checkout), "info/exclude", `/${p}`, { mode: 0o644, owner: a });
    if (r.files.length > 0) this.s.log.debug("decrypted secrets", { files: r.files.map((f) => f.source).join(","), dir });
  }

  /**
   * Puts the checkout at exactly `commit`, cleaned of everything untracked and ignored (what a
   * container wrote), then writes pgod's own import file again: what compose reads next is the
   * commit's bytes and pgod's, nothing else.
   */
  async moveTo(t: Turn, commit: string): Promise<void> {
    const { svc, checkout, d } = this.s;
    const keep = svc.import !== undefined ? [`/${posix.normalize(svc.import)}`] : [];
    try {
      await restoreCheckout({ checkout, branch: svc.branch, commit, keep }, t.a, t.git, d.runner);
    } catch (e) {
      // A checkout that cannot be restored (a full disk: git cannot write its index) may still be
      // exactly the commit already; then what compose reads is what was judged, and self-healing
      // must not wait for disk space. Anything else is an error.
      const plain = await this.secretFiles();
      const ours = [...keep, ...plain.map((p) => `/${p}`)];
      const dotGit = await lstat(join(checkout, ".git")).then(() => true, () => false);
      if (dotGit || !(await t.git.pristine(checkout, commit, ours))) throw e;
      this.s.log.warn("cannot restore the checkout, but it is exactly the commit: going on", { commit: commit.slice(0, 12), error: errorMessage(e) });
    }
    await this.writeImport(t.a);
  }

  /**
   * Writes the Caddy import file into this service's checkout when its content differs, and
   * marks a reload as due. Only the service that sets `import` does this.
   */
  async writeImport(a: Account): Promise<void> {
    const { svc, d } = this.s;
    if (svc.import === undefined || d.importText === undefined) return;
    if (await writeImportFile(this.s.checkout, svc.import, d.importText, a)) {
      this.s.log.info("wrote the Caddy import file", { file: svc.import });
      this.reloadDue = true;
    }
  }

  /** The compose file in `dir` (default the checkout), or null. */
  findComposeFile(dir = this.s.checkout): string | null {
    return findComposeFile((f) => existsSync(join(dir, f)), this.s.svc.compose);
  }

  /** What was looked for when no compose file was found. */
  lookedFor(): string {
    const c = this.s.svc.compose;
    return c !== undefined ? `"${c}"` : COMPOSE_FILES.map((f) => `"${f}"`).join(", ");
  }

  /** The compose file in the checkout, or an error naming what was looked for. */
  composeFile(): string {
    const file = this.findComposeFile();
    if (file === null) throw new Error(`Cannot find a compose file in "${this.s.checkout}": looked for ${this.lookedFor()}`);
    return file;
  }

  /** Clones when the checkout is missing or damaged; returns HEAD. A failed fetch never gets here. */
  async ensureCheckout(t: Turn): Promise<string> {
    const { svc, checkout, d } = this.s;
    const { a, git } = t;
    await ensureGitDirs(checkout);
    const want = remoteAccess(svc.repository).url;
    if (existsSync(checkout)) {
      const head = await this.reuse(t, want);
      if (head !== null) return head;
      this.s.log.warn("checkout is damaged, cloning again", { dir: checkout });
    }
    // The clone goes to <tmp>/<name> with its git directory in <tmp>/.gitdirs/<name> (gitDirOf), both
    // the user's; then each moves to its place.
    const tmp = join(d.dir, `.clone-${svc.name}-${process.pid}-${Math.floor(d.random() * 1e9)}`);
    const work = join(tmp, svc.name);
    await this.removeTree(tmp);
    await privateDir(tmp, a);
    await privateDir(work, a);
    await privateDir(join(tmp, GITDIRS), a);
    try {
      await d.slots.run(() => git.clone(work, svc.repository, svc.branch));
      for (const [from, to] of [[gitDirOf(work), gitDirOf(checkout)], [work, checkout]] as const) {
        if (existsSync(to)) {
          const trash = join(d.dir, `.trash-${svc.name}-${process.pid}`);
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
    const head = await git.head(checkout);
    if (head === null) throw new Error(`Cannot read HEAD of the fresh clone of "${svc.repository}"`);
    this.s.log.info("cloned", { commit: head.slice(0, 12), branch: svc.branch });
    return head;
  }

  /** HEAD of a checkout already there (its owner, git directory and remote URL put right), or null when damaged. */
  private async reuse(t: Turn, want: string): Promise<string | null> {
    const { checkout, d } = this.s;
    const st = await lstat(checkout);
    if (!st.isDirectory()) return null;
    if (st.uid !== t.a.uid) await chownTree(checkout, t.a, d.runner);
    if (await migrateGitDir(checkout, want, t.a, d.runner)) {
      this.s.log.info("moved the git directory out of the checkout", { dir: gitDirOf(checkout) });
    }
    const head = existsSync(gitDirOf(checkout)) ? await t.git.head(checkout) : null;
    if (head === null) return null;
    // The stored URL holds no credentials (remoteAccess); one stored by an older pgod loses them here.
    const url = await t.git.remoteUrl(checkout);
    if (url !== want) await t.git.setRemoteUrl(checkout, want);
    return head;
  }

  /**
   * Removes a tree a container may still be writing (an old checkout): coreutils' rm, which never
   * follows a symlink swapped in meanwhile, and stays on this file system.
   */
  private async removeTree(path: string): Promise<void> {
    if (!existsSync(path)) return;
    await this.s.d.runner(["rm", "-rf", "--one-file-system", "--", path], { env: { PATH: CHILD_PATH } });
  }
}
