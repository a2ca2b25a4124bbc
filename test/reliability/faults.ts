/**
 * Helpers shared by the fault tests: a served service (repository with a client key, pgod, SSH
 * port), and the health checks on what pgod keeps on disk.
 */
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { composeFile, makeKey, run, sshListening, uniqueName, waitRunning } from "../e2e/harness.ts";
import type { Container, Env, Key, Pgod, Repo, ServiceSpec } from "../e2e/harness.ts";
import { gitDirOf } from "../../src/git.ts";
import { checkoutGitArgs } from "../kit/repo.ts";

/** A service whose repository holds `compose.yaml` (VERSION=1) and a client key in `ssh/`. */
export interface Served {
  name: string;
  repo: Repo;
  key: Key;
  pg: Pgod & { dir: string; config: string };
  port: number;
  hostKey: string;
  checkout: string;
  first: Container;
}

/**
 * Makes the repository, starts pgod on it (`repository(repo)` picks the URL pgod follows) and
 * waits for the first deploy.
 */
export async function serve(
  env: Env,
  tag: string,
  o: {
    repository?: (repo: Repo) => Promise<string> | string;
    env?: Record<string, string | undefined>;
    args?: string[];
    extra?: Partial<ServiceSpec>;
    /** More services for the same pgod. */
    others?: ServiceSpec[];
    /** Waits for the first container (default: on the machine's engine). */
    running?: (project: string) => Promise<Container>;
  } = {},
): Promise<Served> {
  const name = uniqueName(tag);
  const key = await makeKey(await env.tempDir(0o700), tag);
  const repo = await env.repo({ "compose.yaml": composeFile({ env: { VERSION: "1" } }), [`ssh/${tag}.pub`]: key.pub });
  const repository = o.repository ? await o.repository(repo) : repo.bare;
  const pg = await env.pgod([{ name, repository, ...o.extra }, ...(o.others ?? [])], { ...(o.env ? { env: o.env } : {}), ...(o.args ? { args: o.args } : {}) });
  const { port, hostKey } = await sshListening(pg);
  const first = await (o.running ?? waitRunning)(name);
  await pg.waitForLog(new RegExp(`msg=deployed service=${name} `));
  return { name, repo, key, pg, port, hostKey, checkout: join(pg.dir, name), first };
}

/** A compose file at version `v` (its container's VERSION variable). */
export function version(v: number): string {
  return composeFile({ env: { VERSION: String(v) } });
}

/** The VERSION variable of a running container. */
export async function versionOf(id: string): Promise<string | undefined> {
  const r = await run(["docker", "inspect", "--type", "container", "--format", "{{json .Config.Env}}", id]);
  const envs = JSON.parse(r.stdout) as string[];
  return envs.find((e) => e.startsWith("VERSION="))?.slice("VERSION=".length);
}

/** Runs git in a checkout of any owner; the result, never a throw. */
export function gitIn(dir: string, ...args: string[]): ReturnType<typeof run> {
  // A checkout pgod made keeps its git directory outside it (gitDirOf); any other repository is plain.
  const where = existsSync(gitDirOf(dir)) ? checkoutGitArgs(dir) : ["-C", dir];
  return run(["git", "-c", "safe.directory=*", ...where, ...args], { check: false, ...(existsSync(dir) ? { cwd: dir } : {}) });
}

/** Checks a checkout is sound: `git fsck` passes, HEAD resolves, the work tree matches HEAD. */
export async function checkoutSound(dir: string): Promise<{ fsck: number; head: string; dirty: string }> {
  const fsck = await gitIn(dir, "fsck", "--no-progress", "--no-dangling");
  const head = (await gitIn(dir, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")).stdout.trim();
  const dirty = (await gitIn(dir, "status", "--porcelain", "--untracked-files=no")).stdout.trim();
  return { fsck: fsck.code, head, dirty };
}

/**
 * The history of a service, line by line: the entries that parse as JSON objects, and the lines
 * that do not (a crash mid-write may leave one torn line; the caller says how many it allows).
 */
export async function historyOf(dir: string, name: string): Promise<{ entries: Array<Record<string, unknown>>; torn: string[]; endsWithNewline: boolean }> {
  const text = await readFile(join(dir, ".state", name, "history"), "utf8");
  const entries: Array<Record<string, unknown>> = [];
  const torn: string[] = [];
  for (const line of text.split("\n")) {
    if (line === "") continue;
    try {
      const v: unknown = JSON.parse(line);
      if (typeof v === "object" && v !== null && !Array.isArray(v)) entries.push(v as Record<string, unknown>);
      else torn.push(line);
    } catch {
      torn.push(line);
    }
  }
  return { entries, torn, endsWithNewline: text === "" || text.endsWith("\n") };
}

/** SHA-256 of a file's bytes. */
export async function hashOf(file: string): Promise<string> {
  return new Bun.CryptoHasher("sha256").update(await readFile(file)).digest("hex");
}
