/** Shared helpers for the fast tests: temp dirs, real git repositories, the fake docker shim. */
import { chmodSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ContainerInfo, Containers } from "../src/containers.ts";
import type { Runner } from "../src/exec.ts";
import { makeRunner } from "../src/exec.ts";
import { memoryLogger } from "../src/log.ts";
import type { Account, Users } from "../src/users.ts";
import { checkoutGitArgs, GIT_IDENTITY, writeTree } from "./kit/repo.ts";
import { tempDir as makeTempDir } from "./kit/temp.ts";
import { waitFor as poll } from "./kit/wait.ts";

/** A temp directory, world-traversable so service users can reach into it. */
export function tempDir(prefix = "pgo-test-"): string {
  return makeTempDir(prefix);
}

/** Runs git synchronously in `cwd`; throws on failure. */
export function git(cwd: string, ...args: string[]): string {
  const r = Bun.spawnSync(["git", ...GIT_IDENTITY, "-c", "init.defaultBranch=main", ...args], {
    cwd, env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: cwd, GIT_CONFIG_NOSYSTEM: "1" },
  });
  if (r.exitCode !== 0) throw new Error(`git ${args.join(" ")}: ${r.stderr.toString()}`);
  return r.stdout.toString().trim();
}

/** Runs git on a checkout pgod made: its git directory lives outside it (gitDirOf). */
export function checkoutGit(checkout: string, ...args: string[]): string {
  return git(checkout, ...checkoutGitArgs(checkout), ...args);
}

/** A bare remote plus a work clone to commit from. */
export class TestRepo {
  readonly remote: string;
  readonly work: string;
  constructor(root: string, files: Record<string, string> = { "compose.yaml": COMPOSE }) {
    this.remote = join(root, "remote.git");
    this.work = join(root, "work");
    mkdirSync(root, { recursive: true, mode: 0o755 });
    git(root, "init", "--quiet", "--bare", "-b", "main", this.remote);
    git(root, "clone", "--quiet", this.remote, this.work);
    this.commit(files, "initial");
  }
  /** Writes files (null deletes), commits and pushes; returns the new commit id. */
  commit(files: Record<string, string | null>, message = "change"): string {
    writeTree(this.work, files);
    git(this.work, "add", "-A");
    git(this.work, "commit", "--quiet", "--allow-empty", "-m", message);
    git(this.work, "push", "--quiet", "--force", "origin", "HEAD:main");
    return git(this.work, "rev-parse", "HEAD");
  }
}

export const COMPOSE = `services:
  web:
    image: pgo-busybox:1
    pull_policy: never
    command: ["/bin/httpd", "-f", "-p", "8080"]
`;

/** A private copy of the fake docker shim; its calls and state are this test's alone. */
export class FakeDocker {
  readonly bin: string;
  constructor(root: string) {
    this.bin = join(root, "fakebin");
    cpSync(join(import.meta.dir, "fakebin"), this.bin, { recursive: true });
    chmodSync(this.bin, 0o777);
  }
  /** Each call: uid, groups, cwd, env names, argv. */
  calls(): { uid: number; groups: number[]; cwd: string; env: string[]; argv: string }[] {
    const f = join(this.bin, "calls.log");
    if (!existsSync(f)) return [];
    return readFileSync(f, "utf8").trim().split("\n").filter(Boolean).map((l) => {
      const [uid, groups, cwd, env, argv] = l.split("\t");
      return { uid: Number(uid), groups: groups!.split(",").map(Number), cwd: cwd!, env: env!.split(","), argv: argv! };
    });
  }
  /** argv of every compose call, without the project and file options. */
  composeCalls(): string[] {
    return this.calls().map((c) => c.argv).filter((a) => a.startsWith("compose ")).map((a) =>
      a.replace(/^compose --project-name \S+ --file \S+ /, "").replace(/^compose --project-name \S+ /, "")
    );
  }
  clear(): void {
    rmSync(join(this.bin, "calls.log"), { force: true });
  }
  fail(sub: string, code = 1): void {
    writeFileSync(join(this.bin, `fail.${sub}`), String(code));
  }
  heal(sub: string): void {
    rmSync(join(this.bin, `fail.${sub}`), { force: true });
  }
  /** Projects the shim believes are up. */
  running(): string[] {
    const d = join(this.bin, "state");
    return existsSync(d) ? readdirSync(d) : [];
  }
  /** A runner whose children find this shim first on PATH. */
  runner(): Runner {
    const real = makeRunner({ logger: memoryLogger() });
    const path = `${this.bin}:${process.env["PATH"] ?? "/usr/bin:/bin"}`;
    return (argv, o) => real(argv, { ...o, env: { ...o.env, PATH: path } });
  }
  /** Container state as the shim sees it. */
  containers(): Containers {
    const list = (project: string): ContainerInfo[] => {
      if (!this.running().includes(project)) return [];
      const state = readFileSync(join(this.bin, "state", project), "utf8").trim() || "running";
      return [{ id: `id-${project}`, project, service: "web", state, health: "", workingDir: "" }];
    };
    return {
      ofProject: async (p) => list(p),
      all: async () => this.running().flatMap(list),
    };
  }
}

/** Users that resolve every name to root, except the names listed as missing. */
export function rootUsers(home: string, missing: string[] = []): Users {
  return {
    async lookup(name) {
      if (missing.includes(name)) throw new Error(`Cannot find user "${name}": no such account`);
      const a: Account = { name, uid: 0, gid: 0, groups: [0], home };
      return a;
    },
  };
}

/** Polls `fn` every 20 ms until it returns a truthy value or the deadline passes (the toolkit's `waitFor`, in the unit tests' shape). */
export function waitFor<T>(fn: () => T | Promise<T>, timeoutMs = 10_000, what = "condition"): Promise<T> {
  return poll(what, fn, Boolean, { timeoutMs, intervalMs: 20, retryErrors: false });
}
