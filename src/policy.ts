/** The sandbox rules checked on the compose model of a non-root service. */
import { lstatSync, readlinkSync } from "node:fs";
import { dirname, isAbsolute, join, resolve as resolvePath } from "node:path";
import { PolicyError } from "./errors.ts";
import { within } from "./yaml_screen.ts";

/** One broken rule: which compose service, which key, which rule, and why. */
export interface Violation {
  service: string;
  /** Compose key path, such as `services.web.privileged` or `volumes.data.driver_opts`. */
  key: string;
  rule: string;
  reason: string;
  /** The offending value, when it helps (a path, a network name). */
  value?: string;
}

export interface PolicyContext {
  project: string;
  /** Directory the model's relative paths were resolved against (the files being evaluated). */
  repoDir: string;
  /** `<datadir>/<name>`. */
  dataDir: string;
  /** Allow-list of Docker network names; absent or empty allows all (DECISIONS #5). */
  networks?: string[];
  /** Resolves symlinks; for a path that does not exist, the deepest existing parent. */
  resolve?: (path: string) => string;
}

/** Every rule, with the compose key it concerns and a one-line reason (for errors and the manual). */
export const RULES: readonly { rule: string; key: string; reason: string }[] = [
  { rule: "privileged", key: "privileged", reason: "a privileged container has every capability and every host device, which makes it root on the host" },
  { rule: "network_host", key: "network_mode", reason: "the host's network namespace exposes every port the host listens on, localhost included" },
  { rule: "network_join", key: "network_mode", reason: "joining the network namespace of another project's container crosses into that project" },
  { rule: "network_not_allowed", key: "networks", reason: "only networks in this service's networks allow-list may be joined" },
  { rule: "ipc_host", key: "ipc", reason: "the host's IPC namespace exposes the shared memory and semaphores of host processes" },
  { rule: "ipc_shared", key: "ipc", reason: "sharing IPC with another project's container, or offering it with shareable, crosses project boundaries" },
  { rule: "pid_host", key: "pid", reason: "the host's PID namespace lets the container see and signal every process on the host" },
  { rule: "pid_join", key: "pid", reason: "joining the PID namespace of another project's container crosses into that project" },
  { rule: "userns_host", key: "userns_mode", reason: "userns_mode host turns off the engine's user-namespace remapping" },
  { rule: "uts_host", key: "uts", reason: "the host's UTS namespace lets the container change the host's hostname" },
  { rule: "cgroup_host", key: "cgroup", reason: "the host's cgroup namespace exposes the host's control groups" },
  { rule: "ports", key: "ports", reason: "published ports listen on the host's interfaces; use expose and the Caddy proxy" },
  { rule: "cap_add", key: "cap_add", reason: "added capabilities widen what root in the container may do to the host kernel" },
  { rule: "devices", key: "devices", reason: "host devices give direct access to hardware and to data outside the container" },
  { rule: "device_cgroup_rules", key: "device_cgroup_rules", reason: "device cgroup rules let the container create and open host device nodes" },
  { rule: "security_opt", key: "security_opt", reason: "turning off seccomp, AppArmor or SELinux confinement, or loading a custom seccomp profile, removes the kernel's guard rails" },
  { rule: "docker_socket", key: "volumes", reason: "the Docker socket gives full control of the engine, which is root on the host" },
  { rule: "bind_outside", key: "volumes", reason: "bind mounts from outside the checkout and the data directory expose the host's files" },
  { rule: "volume_bind_outside", key: "volumes.*.driver_opts", reason: "a volume whose driver options mount a host path outside the checkout and the data directory exposes the host's files" },
  { rule: "file_outside", key: "secrets|configs", reason: "secrets and configs from files outside the checkout and the data directory are bind mounts of host files" },
  { rule: "volumes_from", key: "volumes_from", reason: "volumes_from a container of another project reaches into that project's data" },
];

const REASON = new Map(RULES.map((r) => [r.rule, r.reason]));

const DOCKER_SOCKETS = ["/var/run/docker.sock", "/run/docker.sock"];

const UNCONFINED_SECURITY = new Set([
  "seccomp=unconfined", "apparmor=unconfined", "label=disable", "systempaths=unconfined",
  "label=type:spc_t", "label=type:unconfined_t",
]);

/**
 * Checks a compose model (the output of `docker compose config --format json`) against the
 * rules for a non-root service. The caller skips this for `user = "root"`.
 */
export function evaluatePolicy(model: unknown, ctx: PolicyContext): Violation[] {
  if (!isRecord(model)) throw new PolicyError("Cannot check the compose model: it is not a mapping");
  const resolve = ctx.resolve ?? resolveExisting;
  const roots = [resolve(ctx.repoDir), resolve(ctx.dataDir)];
  const sockets = new Set(DOCKER_SOCKETS.flatMap((s) => [s, resolve(s)]));
  const inside = (p: string): boolean => roots.some((r) => within(p, r));
  const allowed = ctx.networks && ctx.networks.length > 0 ? new Set(ctx.networks) : null;
  const services = isRecord(model["services"]) ? model["services"] : {};
  const topVolumes = isRecord(model["volumes"]) ? model["volumes"] : {};
  const topNetworks = isRecord(model["networks"]) ? model["networks"] : {};
  const ours = ourContainers(ctx.project, services);
  const out: Violation[] = [];

  for (const [svc, def] of Object.entries(services)) {
    if (!isRecord(def)) continue;
    // `key` is relative to the service unless it is a top-level path (`top`).
    const add = (key: string, rule: string, value?: unknown, top = false): void => {
      out.push({
        service: svc,
        key: top ? key : `services.${svc}.${key}`,
        rule,
        reason: REASON.get(rule)!,
        ...(value !== undefined ? { value: typeof value === "string" ? value : JSON.stringify(value) } : {}),
      });
    };
    const joinsOther = (v: string): boolean => v.startsWith("container:") && !ours.has(v.slice("container:".length));
    const mode = (key: string): string | null => {
      const v = def[key];
      if (v === undefined || v === null || v === "") return null;
      return typeof v === "string" ? v.trim() : JSON.stringify(v);
    };

    if (def["privileged"] !== undefined && def["privileged"] !== null && def["privileged"] !== false) {
      add("privileged", "privileged");
    }

    const net = mode("network_mode");
    if (net !== null) {
      const lower = net.toLowerCase();
      if (lower === "host") add("network_mode", "network_host", net);
      else if (lower.startsWith("container:")) {
        if (joinsOther(net)) add("network_mode", "network_join", net);
      } else if (!["none", "bridge", "default"].includes(lower) && !lower.startsWith("service:")) {
        // Any other value names a Docker network to join.
        if (allowed && !allowed.has(net)) add("network_mode", "network_not_allowed", net);
      }
    }

    const ipc = mode("ipc");
    if (ipc !== null) {
      const lower = ipc.toLowerCase();
      if (lower === "host") add("ipc", "ipc_host", ipc);
      else if (!(lower === "private" || lower === "none" || lower.startsWith("service:") ||
        (lower.startsWith("container:") && !joinsOther(ipc)))) add("ipc", "ipc_shared", ipc);
    }

    const pid = mode("pid");
    if (pid !== null) {
      if (pid.toLowerCase() === "host") add("pid", "pid_host", pid);
      else if (!pid.startsWith("service:") && (!pid.startsWith("container:") || joinsOther(pid))) add("pid", "pid_join", pid);
    }
    for (const [key, rule] of [["userns_mode", "userns_host"], ["uts", "uts_host"], ["cgroup", "cgroup_host"]] as const) {
      const v = mode(key);
      if (v !== null && v.toLowerCase() === "host") add(key, rule, v);
    }

    for (const key of ["ports", "cap_add", "devices", "device_cgroup_rules"] as const) {
      if (nonEmpty(def[key])) add(key, key);
    }

    for (const opt of asList(def["security_opt"])) {
      const s = typeof opt === "string" ? opt.trim() : JSON.stringify(opt);
      const m = s.match(/^([^=:]+)[=:](.*)$/);
      const k = (m?.[1] ?? s).trim().toLowerCase();
      const v = (m?.[2] ?? "").trim();
      const norm = `${k}=${v.toLowerCase()}`;
      const customSeccomp = k === "seccomp" && v !== "" && !["unconfined", "builtin", "default"].includes(v.toLowerCase());
      if (UNCONFINED_SECURITY.has(norm) || customSeccomp) add("security_opt", "security_opt", s);
    }

    for (const vol of asList(def["volumes"])) {
      const m = mountOf(vol, ctx.repoDir);
      if (!m) continue;
      if (m.type === "bind") {
        const real = resolve(m.source);
        if (sockets.has(real) || sockets.has(m.source)) add("volumes", "docker_socket", m.source);
        else if (!inside(real)) add("volumes", "bind_outside", m.source);
      } else if (m.type === "volume" && m.source) {
        const top = topVolumes[m.source];
        const opts = isRecord(top) && isRecord(top["driver_opts"]) ? top["driver_opts"] : null;
        if (!opts) continue;
        const device = opts["device"];
        const o = typeof opts["o"] === "string" ? opts["o"] : "";
        const binds = o.split(",").some((x) => ["bind", "rbind"].includes(x.trim()));
        if (typeof device === "string" && (binds || device.startsWith("/"))) {
          if (!isAbsolute(device) || !inside(resolve(device))) add(`volumes.${m.source}.driver_opts`, "volume_bind_outside", device, true);
        } else if (binds) add(`volumes.${m.source}.driver_opts`, "volume_bind_outside", undefined, true);
      }
    }

    for (const kind of ["secrets", "configs"] as const) {
      const top = isRecord(model[kind]) ? model[kind] : {};
      for (const ref of asList(def[kind])) {
        const src = typeof ref === "string" ? ref : isRecord(ref) ? ref["source"] : undefined;
        if (typeof src !== "string") continue;
        const entry = top[src];
        const f = isRecord(entry) ? entry["file"] : undefined;
        if (typeof f !== "string") continue;
        const abs = resolvePath(ctx.repoDir, f);
        if (!inside(resolve(abs))) add(`${kind}.${src}.file`, "file_outside", f, true);
      }
    }

    for (const from of asList(def["volumes_from"])) {
      if (typeof from !== "string") continue;
      const name = from.startsWith("container:") ? from.slice("container:".length).replace(/:(ro|rw)$/, "") : null;
      if (name !== null && !ours.has(name)) add("volumes_from", "volumes_from", from);
    }

    if (allowed) {
      const nets = def["networks"];
      const keys = Array.isArray(nets) ? nets.filter((n): n is string => typeof n === "string") : isRecord(nets) ? Object.keys(nets) : [];
      for (const key of keys) {
        const top = topNetworks[key];
        const dockerName = isRecord(top) && typeof top["name"] === "string" ? top["name"] : key;
        const external = isRecord(top) && top["external"] !== undefined && top["external"] !== false && top["external"] !== null;
        // A network is the project's own only when it has the name compose gives it; any other
        // name may join an existing network (compose only warns), so the allow-list applies.
        const own = !external && dockerName === `${ctx.project}_${key}`;
        if (!own && !allowed.has(dockerName)) add(`networks.${key}`, "network_not_allowed", dockerName);
      }
    }
  }
  return out;
}

/** One line per violation: `compose file "compose.yaml" service "web": "privileged" is refused: <reason>`. */
export function formatViolations(file: string, v: Violation[]): string {
  return v.map((x) => {
    const prefix = `services.${x.service}.`;
    const key = x.key.startsWith(prefix) ? x.key.slice(prefix.length) : x.key;
    const where = x.service ? ` service "${x.service}"` : "";
    return `compose file "${file}"${where}: "${key}" is refused: ${x.reason}${x.value !== undefined ? `: "${x.value}"` : ""}`;
  }).join("\n");
}

/** Names a container of this project can have: its container_name, or `<project>-<service>-<n>`. */
function ourContainers(project: string, services: Record<string, unknown>): { has(name: string): boolean } {
  const named = new Set<string>();
  for (const def of Object.values(services)) {
    if (isRecord(def) && typeof def["container_name"] === "string") named.add(def["container_name"]);
  }
  return {
    has(name) {
      if (named.has(name)) return true;
      const m = name.match(/^(.+)[-_]\d+$/);
      if (!m || !m[1]!.startsWith(project)) return false;
      const rest = m[1]!.slice(project.length);
      return (rest.startsWith("-") || rest.startsWith("_")) && Object.hasOwn(services, rest.slice(1));
    },
  };
}

/** A volume entry as type and source, from the long syntax or the short one. */
function mountOf(vol: unknown, base: string): { type: string; source: string } | null {
  if (typeof vol === "string") {
    const src = vol.split(":")[0] ?? "";
    if (src.startsWith("/") || src.startsWith(".") || src.startsWith("~")) return { type: "bind", source: resolvePath(base, src) };
    return { type: "volume", source: src };
  }
  if (!isRecord(vol)) return null;
  const source = typeof vol["source"] === "string" ? vol["source"] : "";
  const type = typeof vol["type"] === "string" ? vol["type"] : source.startsWith("/") ? "bind" : "volume";
  return { type, source: type === "bind" ? resolvePath(base, source) : source };
}

/**
 * realpath for paths that need not exist: follows every symlink, dangling ones included (the
 * engine creates a missing bind source through them), and keeps the missing rest as written.
 */
export function resolveExisting(path: string): string {
  const pending = resolvePath(path).split("/").filter(Boolean);
  let cur = "/";
  let links = 0;
  while (pending.length > 0) {
    const part = pending.shift()!;
    if (part === ".") continue;
    if (part === "..") {
      cur = dirname(cur);
      continue;
    }
    const next = join(cur, part);
    let link: string | null = null;
    try {
      if (lstatSync(next).isSymbolicLink()) link = readlinkSync(next);
    } catch {
      // Missing: the rest is kept as written.
    }
    if (link === null) {
      cur = next;
      continue;
    }
    if (++links > 40) return next; // a loop: the engine fails on it too
    pending.unshift(...link.split("/").filter(Boolean));
    if (link.startsWith("/")) cur = "/";
  }
  return cur;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function asList(v: unknown): unknown[] {
  return v === undefined || v === null ? [] : Array.isArray(v) ? v : [v];
}

function nonEmpty(v: unknown): boolean {
  if (v === undefined || v === null || v === false || v === "") return false;
  if (Array.isArray(v)) return v.length > 0;
  if (isRecord(v)) return Object.keys(v).length > 0;
  return true;
}
