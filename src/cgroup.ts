/**
 * Limited cgroups for docker compose children (DECISIONS #10), cgroup v1 or v2: one per service,
 * so that one service's evaluation cannot use up the memory or the process slots of another's.
 */
import { lstat, mkdir, readdir, readFile, rmdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { errnoCode } from "./errors.ts";

/** How many processes the kernel's OOM killer has ended in a cgroup (v1 or v2); 0 if unknown. */
export async function oomKills(dir: string): Promise<number> {
  for (const f of ["memory.oom_control", "memory.events"]) {
    const text = await readFile(join(dir, f), "utf8").catch(() => null);
    const m = text?.match(/^oom_kill (\d+)$/m);
    if (m) return Number(m[1]);
  }
  return 0;
}

/** How often a fork in a cgroup failed on its pids limit (v1 or v2); 0 if unknown. */
export async function pidsRefusals(dir: string): Promise<number> {
  const text = await readFile(join(dir, "pids.events"), "utf8").catch(() => null);
  const m = text?.match(/^max (\d+)$/m);
  return m ? Number(m[1]) : 0;
}

/** Limits of a cgroup made by makeCgroups. */
export interface CgroupLimits {
  /** Memory, swap included. */
  memoryBytes: number;
  /** Processes and threads at once; none when absent. */
  pids?: number;
}

/**
 * Limits of each service's evaluations (`docker compose config`): far above what a real compose
 * file needs (tens of MiB, a few dozen threads), far below what starves the machine.
 */
export const EVAL_LIMITS: CgroupLimits = { memoryBytes: 1024 * 1024 * 1024, pids: 256 };

/** The prefix of the names of pgod's evaluation cgroups: `compose-<pid>-<service>`. */
export const EVAL_PREFIX = "compose";

const CGROUP_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/**
 * Makes (or updates) the cgroup `pgo/<name>` below pgod's own cgroup with `limits`. With cgroup
 * v1 that is one directory in the memory hierarchy and one in the pids hierarchy; with cgroup v2
 * one directory. Returns the directories, the memory one first; empty when no usable memory
 * controller is found (then no limit applies at all).
 */
export async function makeCgroups(name: string, limits: CgroupLimits): Promise<string[]> {
  if (!CGROUP_NAME.test(name)) throw new Error(`Cannot make a cgroup for "${name}": not a plain name`);
  const bad = (n: number | undefined): boolean => n !== undefined && (!Number.isSafeInteger(n) || n <= 0);
  if (bad(limits.memoryBytes) || bad(limits.pids)) throw new Error(`Cannot make a cgroup for "${name}": bad limit`);
  const bases = await cgroupBases();
  const memory = bases.v1.get("memory");
  const v1 = memory ? await v1Memory(memory, name, limits.memoryBytes) : null;
  if (v1 !== null) {
    const pidsBase = bases.v1.get("pids");
    const pids = limits.pids !== undefined && pidsBase ? await v1Pids(pidsBase, name, limits.pids) : null;
    return pids ? [v1, pids] : [v1];
  }
  const v2 = bases.v2 ? await v2Cgroup(bases.v2, name, limits) : null;
  return v2 ? [v2] : [];
}

/**
 * Makes (or updates) the memory cgroup `pgo/<name>` limited to `bytes` (swap included); its
 * directory, or null when no usable memory controller is found.
 */
export async function makeMemoryCgroup(name: string, bytes: number): Promise<string | null> {
  if (!CGROUP_NAME.test(name)) throw new Error(`Cannot make a memory cgroup for "${name}": not a plain name`);
  if (!Number.isInteger(bytes) || bytes <= 0) throw new Error(`Cannot make a memory cgroup for "${name}": bad limit ${bytes}`);
  return (await makeCgroups(name, { memoryBytes: bytes }))[0] ?? null;
}

/** Removes a cgroup made by makeMemoryCgroup; false if it is still in use or cannot be removed. */
export async function removeMemoryCgroup(dir: string): Promise<boolean> {
  // A process the OOM killer just ended can keep the cgroup busy for a few milliseconds after
  // its parent saw it exit, so EBUSY is retried for a short, bounded while.
  for (let attempt = 0; ; attempt++) {
    try {
      await rmdir(dir);
      return true;
    } catch (e) {
      if (errnoCode(e) === "ENOENT") return true;
      if (errnoCode(e) !== "EBUSY" || attempt >= 25) return false;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** Removes the directories makeCgroups made; false if one is still in use. */
export async function removeCgroups(dirs: readonly string[]): Promise<boolean> {
  const done = await Promise.all(dirs.map((d) => removeMemoryCgroup(d)));
  return done.every(Boolean);
}

/**
 * Removes the cgroups `pgo/<prefix>-<pid>` and `pgo/<prefix>-<pid>-*` that a pgod which is gone
 * (killed, say) left behind; returns the directories removed. Cgroups still in use stay.
 */
export async function removeStaleCgroups(prefix: string, alive: (pid: number) => boolean = pidAlive): Promise<string[]> {
  const bases = await cgroupBases();
  const parents = [...bases.v1.values(), ...(bases.v2 ? [bases.v2] : [])].map((b) => join(b, "pgo"));
  const removed: string[] = [];
  const own = new RegExp(`^${prefix.replace(/[^A-Za-z0-9]/g, "\\$&")}-(\\d+)(-.*)?$`);
  for (const parent of new Set(parents)) {
    const entries = await readdir(parent).catch(() => [] as string[]);
    for (const e of entries) {
      const m = own.exec(e);
      if (!m || alive(Number(m[1]))) continue;
      const dir = join(parent, e);
      if (await rmdir(dir).then(() => true, () => false)) removed.push(dir);
    }
  }
  return removed;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return errnoCode(e) === "EPERM";
  }
}

/** Where pgod's own cgroups are: v1 controller to directory, and the v2 directory. */
async function cgroupBases(): Promise<{ v1: Map<string, string>; v2: string | null }> {
  const [self, mounts] = await Promise.all([
    readFile("/proc/self/cgroup", "utf8").catch(() => ""),
    readFile("/proc/self/mountinfo", "utf8").catch(() => ""),
  ]);
  const own = ownCgroups(self);
  const v1 = new Map<string, string>();
  let v2: string | null = null;
  for (const m of cgroupMounts(mounts)) {
    const path = m.v2 ? own.get("") : m.controllers.map((c) => own.get(c)).find((p) => p !== undefined);
    if (path === undefined) continue;
    const rel = path.startsWith(m.root) ? path.slice(m.root.length) : path;
    const base = join(m.mountPoint, rel);
    if (m.v2) v2 ??= base;
    else for (const c of ["memory", "pids"]) if (m.controllers.includes(c) && !v1.has(c)) v1.set(c, base);
  }
  return { v1, v2 };
}

async function v1Memory(base: string, name: string, bytes: number): Promise<string | null> {
  const dir = join(base, "pgo", name);
  try {
    await mkdir(dir, { recursive: true });
    const limit = join(dir, "memory.limit_in_bytes");
    const memsw = join(dir, "memory.memsw.limit_in_bytes");
    const hasSwap = await lstat(memsw).then(() => true, () => false);
    // The memory+swap limit may never be below the memory limit, so the order depends on
    // whether the limit goes up or down.
    try {
      await writeFile(limit, String(bytes));
      if (hasSwap) await writeFile(memsw, String(bytes));
    } catch {
      if (hasSwap) await writeFile(memsw, String(bytes));
      await writeFile(limit, String(bytes));
    }
    const set = Number((await readFile(limit, "utf8")).trim());
    return set > 0 && set <= bytes ? dir : null;
  } catch {
    await rmdir(dir).catch(() => {});
    return null;
  }
}

async function v1Pids(base: string, name: string, pids: number): Promise<string | null> {
  const dir = join(base, "pgo", name);
  try {
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, "pids.max"), String(pids));
    return dir;
  } catch {
    await rmdir(dir).catch(() => {});
    return null;
  }
}

async function v2Cgroup(base: string, name: string, limits: CgroupLimits): Promise<string | null> {
  const parent = join(base, "pgo");
  const dir = join(parent, name);
  try {
    const controllers = (await readFile(join(base, "cgroup.controllers"), "utf8")).split(/\s+/);
    if (!controllers.includes("memory")) return null;
    const wanted = limits.pids !== undefined && controllers.includes("pids") ? "+memory +pids" : "+memory";
    // Fails with EBUSY when pgod's own cgroup holds processes and is not the root ("no internal
    // processes"); then cgroup v2 is not usable without delegation.
    await writeFile(join(base, "cgroup.subtree_control"), wanted);
    await mkdir(parent, { recursive: true });
    await writeFile(join(parent, "cgroup.subtree_control"), wanted);
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, "memory.max"), String(limits.memoryBytes));
    await writeFile(join(dir, "memory.swap.max"), "0").catch(() => {});
    if (wanted.includes("pids")) await writeFile(join(dir, "pids.max"), String(limits.pids));
    return dir;
  } catch {
    await rmdir(dir).catch(() => {});
    return null;
  }
}

/** Controller ("" for cgroup v2) to cgroup path, from /proc/self/cgroup. */
function ownCgroups(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split("\n")) {
    const m = line.match(/^\d+:([^:]*):(.*)$/);
    if (!m) continue;
    for (const c of m[1]!.split(",")) out.set(c, m[2]!);
  }
  return out;
}

/** cgroup mounts from /proc/self/mountinfo, cgroup v1 first. */
function cgroupMounts(text: string): { root: string; mountPoint: string; v2: boolean; controllers: string[] }[] {
  const out: { root: string; mountPoint: string; v2: boolean; controllers: string[] }[] = [];
  for (const line of text.split("\n")) {
    const [pre, post] = line.split(" - ");
    if (!pre || !post) continue;
    const f = pre.split(" ");
    const [fstype, , superOpts = ""] = post.split(" ");
    if (fstype !== "cgroup" && fstype !== "cgroup2") continue;
    const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    out.push({
      root: unescape(f[3] ?? "/").replace(/\/$/, ""),
      mountPoint: unescape(f[4] ?? ""),
      v2: fstype === "cgroup2",
      controllers: superOpts.split(","),
    });
  }
  return out.sort((a, b) => Number(a.v2) - Number(b.v2));
}

