/** Resolves a service's Unix user: uid, gid, supplementary groups plus `docker`, and a home. */
import { mkdir, chown, chmod, stat } from "node:fs/promises";
import { join } from "node:path";
import { CHILD_PATH } from "./child_env.ts";
import type { Identity, Runner } from "./exec.ts";

/** A resolved account. */
export interface Account extends Identity {
  name: string;
  home: string;
  /** The `docker` group's id when the machine has one: in `groups`, for docker children only. */
  dockerGid?: number;
}

export interface UsersOptions {
  runner: Runner;
  /** Where homes are made for accounts without a usable one (`<dir>/.home`). */
  homeRoot: string;
  /** Cache lifetime in ms (default 60 s). */
  ttlMs?: number;
  now?: () => number;
}

/** Looks up accounts (through NSS, with `getent`), cached for a short while. */
export interface Users {
  lookup(name: string): Promise<Account>;
}

const UNUSABLE_HOMES = new Set(["", "/", "/nonexistent", "/non-existent", "/bestaat-niet", "/dev/null"]);

/** Makes the account resolver. */
export function makeUsers(o: UsersOptions): Users {
  const cache = new Map<string, { at: number; account: Promise<Account> }>();
  const ttl = o.ttlMs ?? 60_000;
  const now = o.now ?? Date.now;
  const getent = async (db: string, key: string): Promise<string | null> => {
    const r = await o.runner(["getent", db, key], { env: { PATH: CHILD_PATH }, check: false, timeoutMs: 10_000 });
    return r.exitCode === 0 ? r.stdout.trim().split("\n")[0] ?? null : null;
  };
  const resolve = async (name: string): Promise<Account> => {
    const pw = await getent("passwd", name);
    if (!pw) throw new Error(`Cannot find user "${name}": no such account`);
    const f = pw.split(":");
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    if (!Number.isInteger(uid) || !Number.isInteger(gid)) throw new Error(`Cannot read user "${name}": bad passwd entry`);
    const groups = new Set<number>([gid]);
    const idg = await o.runner(["id", "-G", name], { env: { PATH: CHILD_PATH }, check: false, timeoutMs: 10_000 });
    if (idg.exitCode === 0) for (const g of idg.stdout.trim().split(/\s+/)) if (g) groups.add(Number(g));
    const docker = await getent("group", "docker");
    const dockerGid = docker ? Number(docker.split(":")[2]) : NaN;
    if (Number.isInteger(dockerGid)) groups.add(dockerGid);
    let home = f[5] ?? "";
    if (!(await usableHome(home))) {
      home = join(o.homeRoot, name);
      // Every user must traverse the shared parent to reach its own home (0711: not listable).
      await mkdir(o.homeRoot, { recursive: true });
      await chmod(o.homeRoot, 0o711);
      await mkdir(home, { recursive: true, mode: 0o700 });
      await chown(home, uid, gid);
      await chmod(home, 0o700);
    }
    return {
      name, uid, gid, groups: [...groups].filter((g) => Number.isInteger(g)), home,
      ...(Number.isInteger(dockerGid) ? { dockerGid } : {}),
    };
  };
  return {
    lookup(name) {
      const hit = cache.get(name);
      if (hit && now() - hit.at < ttl) return hit.account;
      const account = resolve(name);
      cache.set(name, { at: now(), account });
      account.catch(() => cache.delete(name));
      return account;
    },
  };
}

async function usableHome(home: string): Promise<boolean> {
  if (UNUSABLE_HOMES.has(home)) return false;
  try {
    return (await stat(home)).isDirectory();
  } catch {
    return false;
  }
}

/**
 * The account without the `docker` group (the engine's socket is root on the host): for git and
 * every other child that is not docker itself. It also goes when the user is a member of its own.
 */
export function withoutDocker(a: Account): Account {
  if (a.dockerGid === undefined) return a;
  const groups = a.groups.filter((g) => g !== a.dockerGid);
  return { ...a, groups: groups.length > 0 ? groups : [a.gid] };
}

/**
 * Whether a service runs as root (`user = "root"`): the compose policy does not apply to it, since
 * root needs no container to reach the host. The one notion of root for a service; exec.ts asks
 * `uid === 0` only to know whether it must drop privileges at all.
 */
export function isRoot(a: Account): boolean {
  return a.name === "root";
}
