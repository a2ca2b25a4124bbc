/** Memory-limited cgroups for docker compose children (DECISIONS #10), cgroup v1 or v2. */
import { lstat, mkdir, readFile, rmdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { errno } from "./yaml_screen.ts";

/** How many processes the kernel's OOM killer has ended in a cgroup (v1 or v2); 0 if unknown. */
export async function oomKills(dir: string): Promise<number> {
  for (const f of ["memory.oom_control", "memory.events"]) {
    const text = await readFile(join(dir, f), "utf8").catch(() => null);
    const m = text?.match(/^oom_kill (\d+)$/m);
    if (m) return Number(m[1]);
  }
  return 0;
}

const CGROUP_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/**
 * Makes (or updates) the memory cgroup `pgo/<name>` below pgod's own cgroup and limits it to
 * `bytes` (swap included). Uses the cgroup v1 memory controller when it is mounted, else
 * cgroup v2. Returns its directory, or null when no usable memory controller is found.
 */
export async function makeMemoryCgroup(name: string, bytes: number): Promise<string | null> {
  if (!CGROUP_NAME.test(name)) throw new Error(`Cannot make a memory cgroup for "${name}": not a plain name`);
  if (!Number.isInteger(bytes) || bytes <= 0) throw new Error(`Cannot make a memory cgroup for "${name}": bad limit ${bytes}`);
  const [self, mounts] = await Promise.all([
    readFile("/proc/self/cgroup", "utf8").catch(() => ""),
    readFile("/proc/self/mountinfo", "utf8").catch(() => ""),
  ]);
  const own = ownCgroups(self);
  for (const m of cgroupMounts(mounts)) {
    const path = m.v2 ? own.get("") : own.get("memory");
    if (path === undefined || (!m.v2 && !m.controllers.includes("memory"))) continue;
    const rel = path.startsWith(m.root) ? path.slice(m.root.length) : path;
    const base = join(m.mountPoint, rel);
    const dir = m.v2 ? await v2Cgroup(base, name, bytes) : await v1Cgroup(base, name, bytes);
    if (dir) return dir;
  }
  return null;
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
      if (errno(e) === "ENOENT") return true;
      if (errno(e) !== "EBUSY" || attempt >= 25) return false;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

async function v1Cgroup(base: string, name: string, bytes: number): Promise<string | null> {
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

async function v2Cgroup(base: string, name: string, bytes: number): Promise<string | null> {
  const parent = join(base, "pgo");
  const dir = join(parent, name);
  try {
    const controllers = await readFile(join(base, "cgroup.controllers"), "utf8");
    if (!controllers.split(/\s+/).includes("memory")) return null;
    // Fails with EBUSY when pgod's own cgroup holds processes and is not the root ("no internal
    // processes"); then cgroup v2 is not usable without delegation.
    await writeFile(join(base, "cgroup.subtree_control"), "+memory");
    await mkdir(parent, { recursive: true });
    await writeFile(join(parent, "cgroup.subtree_control"), "+memory");
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, "memory.max"), String(bytes));
    await writeFile(join(dir, "memory.swap.max"), "0").catch(() => {});
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

