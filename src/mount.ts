/**
 * NFS shares on `<datadir>/<name>`: mounted once before a service starts, unmounted when it goes.
 * Each share pgod mounts is recorded in `<dir>/.state/<name>/mount`; only recorded shares are
 * ever unmounted, so an administrator's own mount under the data root is never touched.
 */
import { readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { writeFileAtomic } from "./files.ts";
import type { Mount } from "./config.ts";
import type { Runner } from "./exec.ts";
import { CHILD_PATH } from "./child_env.ts";

/** Mount points listed in a mountinfo file (field 5, with octal escapes undone). */
export function mountPoints(mountinfo: string): Set<string> {
  const out = new Set<string>();
  for (const line of mountinfo.split("\n")) {
    const f = line.split(" ");
    if (f.length > 4) out.add(f[4]!.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
  }
  return out;
}

/** The mount(8) source and options for an `nfs://` URL. */
export function nfsSource(m: Mount): { source: string; options: string } {
  const host = m.host.includes(":") ? `[${m.host}]` : m.host;
  return { source: `${host}:${m.path}`, options: `rw,nosuid,nodev,hard${m.port ? `,port=${m.port}` : ""}` };
}

export interface MountDeps {
  runner: Runner;
  /** Default /proc/self/mountinfo. */
  mountinfo?: string;
  /** `<dir>/.state`: where the shares pgod mounted are recorded, one `<name>/mount` file each. */
  stateDir?: string;
}

/** The file recording the share pgod mounted for `service`. */
export function mountRecord(stateDir: string, service: string): string {
  return join(stateDir, service, "mount");
}

async function mounted(d: MountDeps): Promise<Set<string>> {
  return mountPoints(await readFile(d.mountinfo ?? "/proc/self/mountinfo", "utf8"));
}

/** Mounts the share on `target` unless something is mounted there already; returns whether it mounted. */
export async function ensureMounted(service: string, m: Mount, target: string, d: MountDeps): Promise<boolean> {
  if ((await mounted(d)).has(target)) return false;
  const { source, options } = nfsSource(m);
  await d.runner(["mount", "-t", "nfs", "-o", options, source, target], {
    env: { PATH: CHILD_PATH }, timeoutMs: 120_000, tag: { service, cmd: "mount", subcmd: "mount" },
  });
  if (d.stateDir !== undefined) await writeFileAtomic(mountRecord(d.stateDir, service), `${target}\n`);
  return true;
}

/**
 * Unmounts the shares pgod recorded mounting (in `d.stateDir`) for services not in `keep`, and
 * drops their records; a share that is no longer mounted only loses its record. Mounts pgod did
 * not record are left alone. Returns the mount points unmounted.
 */
export async function unmountStale(datadir: string, keep: ReadonlySet<string>, d: MountDeps & { stateDir: string }): Promise<string[]> {
  const gone: string[] = [];
  const names = await readdir(d.stateDir).catch(() => [] as string[]);
  const now = await mounted(d);
  for (const name of names) {
    if (keep.has(name)) continue;
    const record = mountRecord(d.stateDir, name);
    const target = (await readFile(record, "utf8").catch(() => "")).trim();
    // Only the data directory of that very service, whatever the record says.
    if (target !== join(datadir, name)) continue;
    if (now.has(target)) {
      await d.runner(["umount", target], { env: { PATH: CHILD_PATH }, timeoutMs: 120_000, tag: { service: name, cmd: "mount", subcmd: "umount" } });
      gone.push(target);
    }
    await rm(record, { force: true });
  }
  return gone;
}
