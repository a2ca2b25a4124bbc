/** NFS shares on `<datadir>/<name>`: mounted once before a service starts, unmounted when it goes. */
import { readFile } from "node:fs/promises";
import type { Mount } from "./config.ts";
import type { Runner } from "./exec.ts";
import { CHILD_PATH } from "./users.ts";

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
  return true;
}

/** Unmounts every mount point directly under `datadir` whose name is not in `keep`; returns them. */
export async function unmountStale(datadir: string, keep: ReadonlySet<string>, d: MountDeps): Promise<string[]> {
  const gone: string[] = [];
  for (const p of await mounted(d)) {
    if (!p.startsWith(`${datadir}/`)) continue;
    const name = p.slice(datadir.length + 1);
    if (name.includes("/") || keep.has(name)) continue;
    await d.runner(["umount", p], { env: { PATH: CHILD_PATH }, timeoutMs: 120_000, tag: { service: name, cmd: "mount", subcmd: "umount" } });
    gone.push(p);
  }
  return gone;
}
