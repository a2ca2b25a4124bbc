/**
 * Rules on what a container mounts: bind sources stay in the checkout (read-only unless the
 * admin allows) or the data directory, named volumes are the project's own plain local volumes,
 * and files read for secrets, configs and env_file come from the checkout.
 */
import { isAbsolute, resolve as resolvePath } from "node:path";
import type { Rule, Walk } from "./context.ts";
import { isRecord } from "../json.ts";
import { asList, nonEmpty, text, top } from "./context.ts";

export const VOLUME_RULES: readonly Rule[] = [
  { rule: "docker_socket", key: "volumes", reason: "the Docker socket gives full control of the engine, which is root on the host" },
  { rule: "bind_outside", key: "volumes", reason: "bind mounts from outside the checkout and the data directory expose the host's files" },
  { rule: "checkout_bind_rw", key: "volumes", reason: "a writable bind of the checkout lets a container change the repository pgod runs git in (hooks, config); add read_only or :ro, or set checkout_binds = \"rw\"" },
  { rule: "bind_options", key: "volumes.bind", reason: "mount propagation can carry mounts between the container and the host, and SELinux relabelling changes the labels of host files" },
  { rule: "mount_type", key: "volumes.type", reason: "only bind, volume and tmpfs mounts are known to stay inside the project" },
  { rule: "volume_subpath", key: "volumes.volume.subpath", reason: "the engine resolves a subpath inside a volume as root, where the container may have planted symlinks" },
  { rule: "volume_external", key: "volumes.*.external", reason: "an external volume is one the project did not create: another project's data, by its name" },
  { rule: "volume_name", key: "volumes.*.name", reason: "a volume named other than <project>_<key> can be another project's volume" },
  { rule: "volume_driver", key: "volumes.*.driver", reason: "only the local driver is known to keep a volume on this host and inside the engine's own directory" },
  { rule: "volume_driver_opts", key: "volumes.*.driver_opts", reason: "driver options mount any filesystem (proc, sysfs, devtmpfs, overlay, nfs, cifs, a bind of a host path); only a tmpfs with size, mode, uid, gid and nr_inodes is allowed" },
  { rule: "volume_in_use", key: "volumes.*.name", reason: "a volume of that name already exists and belongs to another project (its com.docker.compose.project label differs)" },
  { rule: "file_outside", key: "secrets|configs|env_file", reason: "secrets, configs and env files from outside the checkout and the data directory are host files" },
  { rule: "external_secret", key: "secrets.*.external|configs.*.external", reason: "external secrets and configs are the engine's, shared between projects" },
];

/** The options of a tmpfs volume that cannot reach outside it. */
const TMPFS_OPTIONS = /^(size=\d+[kmgKMG%]?|mode=[0-7]{3,4}|uid=\d+|gid=\d+|nr_inodes=\d+[kmgKMG]?)$/;

export function checkVolumes(w: Walk): void {
  const volumes = top(w, "volumes");
  const sockets = new Set(["/var/run/docker.sock", "/run/docker.sock"].flatMap((s) => [s, w.resolve(s)]));
  const checkoutRw = w.ctx.checkoutBinds === "rw";

  for (const { name: svc, def } of w.services) {
    asList(def["volumes"]).forEach((vol, i) => {
      const at = `volumes[${i}]`;
      const m = mountOf(vol, w.ctx.repoDir);
      if (m === null) return;
      if (m.type === "bind") {
        if (!isAbsolute(m.source)) return w.add(svc, at, "bind_outside", m.source);
        const real = w.resolve(m.source);
        if (sockets.has(real) || sockets.has(m.source)) w.add(svc, at, "docker_socket", m.source);
        else if (!w.inside(real)) w.add(svc, at, "bind_outside", m.source);
        else if (w.inCheckout(real) && !m.readOnly && !checkoutRw) w.add(svc, at, "checkout_bind_rw", m.source);
      } else if (m.type !== "volume" && m.type !== "tmpfs") {
        w.add(svc, `${at}.type`, "mount_type", m.type);
      }
      if (isRecord(vol)) {
        const bind = isRecord(vol["bind"]) ? vol["bind"] : {};
        const prop = bind["propagation"];
        if (nonEmpty(prop) && !["private", "rprivate"].includes(text(prop))) w.add(svc, `${at}.bind.propagation`, "bind_options", prop);
        if (nonEmpty(bind["selinux"])) w.add(svc, `${at}.bind.selinux`, "bind_options", bind["selinux"]);
        const v = isRecord(vol["volume"]) ? vol["volume"] : {};
        if (nonEmpty(v["subpath"])) w.add(svc, `${at}.volume.subpath`, "volume_subpath", v["subpath"]);
      }
    });

    for (const f of asList(def["env_file"])) {
      const p = typeof f === "string" ? f : isRecord(f) ? f["path"] : undefined;
      if (typeof p === "string" && !w.inside(w.resolve(resolvePath(w.ctx.repoDir, p)))) w.add(svc, "env_file", "file_outside", p);
    }
  }

  for (const [key, def] of Object.entries(volumes)) {
    if (!isRecord(def)) continue;
    const at = `volumes.${key}`;
    if (nonEmpty(def["external"])) {
      w.add("", `${at}.external`, "volume_external", def["name"] ?? key);
      continue;
    }
    const own = `${w.project}_${key}`;
    const name = def["name"] ?? own;
    if (name !== own) w.add("", `${at}.name`, "volume_name", name);
    else if (w.foreign(own) !== undefined) w.add("", at, "name_collision", own);
    else {
      const owner = w.ctx.existing?.volumes.get(own);
      if (owner !== undefined && owner !== w.project) w.add("", at, "volume_in_use", own);
    }
    const driver = def["driver"];
    if (nonEmpty(driver) && driver !== "local") w.add("", `${at}.driver`, "volume_driver", driver);
    const opts = def["driver_opts"];
    if (nonEmpty(opts) && !tmpfsOptions(opts)) w.add("", `${at}.driver_opts`, "volume_driver_opts", opts);
  }

  for (const kind of ["secrets", "configs"] as const) {
    for (const [key, def] of Object.entries(top(w, kind))) {
      if (!isRecord(def)) continue;
      if (nonEmpty(def["external"])) w.add("", `${kind}.${key}.external`, "external_secret", key);
      const f = def["file"];
      if (typeof f === "string" && !w.inside(w.resolve(resolvePath(w.ctx.repoDir, f)))) w.add("", `${kind}.${key}.file`, "file_outside", f);
    }
  }
}

/** Whether driver options describe a plain tmpfs: type and device tmpfs, o only size/mode/uid/gid/nr_inodes. */
function tmpfsOptions(opts: unknown): boolean {
  if (!isRecord(opts)) return false;
  for (const [k, v] of Object.entries(opts)) {
    if (typeof v !== "string") return false;
    if ((k === "type" || k === "device") && v === "tmpfs") continue;
    if (k === "o" && v.split(",").every((o) => TMPFS_OPTIONS.test(o.trim()))) continue;
    return false;
  }
  return opts["type"] === "tmpfs";
}

/** A volume entry as type, source and read-only flag, from the long syntax or the short one. */
function mountOf(vol: unknown, base: string): { type: string; source: string; readOnly: boolean } | null {
  if (typeof vol === "string") {
    const parts = vol.split(":");
    const src = parts[0] ?? "";
    const readOnly = parts.length > 2 && (parts[parts.length - 1] ?? "").split(",").includes("ro");
    if (src.startsWith("/") || src.startsWith(".") || src.startsWith("~")) return { type: "bind", source: resolvePath(base, src), readOnly };
    return { type: "volume", source: src, readOnly };
  }
  if (!isRecord(vol)) return null;
  const source = typeof vol["source"] === "string" ? vol["source"] : "";
  const type = typeof vol["type"] === "string" ? vol["type"] : source.startsWith("/") ? "bind" : "volume";
  return { type, source: type === "bind" && isAbsolute(source) ? resolvePath(source) : source, readOnly: vol["read_only"] === true };
}
