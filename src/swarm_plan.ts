/**
 * The stack file `docker stack deploy` reads, made from the compose model (as `docker compose
 * config` resolves it): keys stack deploy rejects are dropped with a warning for `check`, and
 * configs and secrets get content-hashed names so a change rotates them.
 */
import { createHash } from "node:crypto";
import { readCapped } from "./files.ts";
import { isRecord } from "./json.ts";

/** Keys `docker stack deploy` rejects or ignores: dropped from the stack file, with the warning for `check`. */
const DROPPED: Record<string, string> = {
  build: "stack deploy does not build images: the image must exist on every node",
  container_name: "Swarm names its tasks itself",
  restart: "Swarm uses deploy.restart_policy instead",
  pull_policy: "stack deploy has no pull policy (pgod passes --resolve-image instead)",
  profiles: "profiles are resolved before the stack is made",
};

const MAX_FILE_BYTES = 1024 * 1024;

/** The stack file made from a compose model, and what was left out of it. */
export interface StackPlan {
  /** JSON (a subset of YAML) for `docker stack deploy -c -`. */
  text: string;
  /** Keys the stack leaves out, as `services.web.build: reason`, for `check`. */
  warnings: string[];
  /** `never` when every service has pull_policy never or build (local images), else `always`. */
  resolveImage: "never" | "always";
  /** Compose service names (swarm services are `<project>_<name>`). */
  services: string[];
  /** Config and secret objects the stack creates: their hashed names by kind. */
  objects: { kind: "config" | "secret"; key: string; name: string }[];
}

/**
 * Makes the stack file for `model`. `content` reads a config or secret file (an absolute path
 * the model names) so that its object gets the name `<project>_<key>_<hash>`.
 */
export async function planStack(model: unknown, project: string, content: (path: string) => Promise<Uint8Array>): Promise<StackPlan> {
  if (!isRecord(model)) throw new Error("Cannot make a stack file: the compose model is not a mapping");
  const warnings: string[] = [];
  const out: Record<string, unknown> = {};
  const services = isRecord(model["services"]) ? model["services"] : {};
  const stackServices: Record<string, unknown> = {};
  let local = true;
  for (const [name, def] of Object.entries(services)) {
    if (!isRecord(def)) continue;
    const s: Record<string, unknown> = {};
    const policy = def["pull_policy"];
    if (!(policy === "never" || policy === "build" || def["build"] !== undefined)) local = false;
    warnings.push(...serviceWarnings(name, def));
    for (const [k, v] of Object.entries(def)) {
      if (v === null || v === undefined || k in DROPPED) continue;
      // Swarm starts services in no order; the long syntax's conditions are not kept.
      s[k] = k === "depends_on" && isRecord(v) ? Object.keys(v) : v;
    }
    if (typeof s["image"] !== "string") throw new Error(`Cannot make a stack file: service "${name}" has no image (stack deploy does not build)`);
    stackServices[name] = s;
  }
  out["services"] = stackServices;
  for (const kind of ["networks", "volumes"] as const) {
    const top = model[kind];
    if (!isRecord(top)) continue;
    const m: Record<string, unknown> = {};
    for (const [key, def] of Object.entries(top)) {
      const d = isRecord(def) ? { ...def } : {};
      // The default name (`<project>_<key>`) is the one the stack gives itself.
      if (d["name"] === `${project}_${key}`) delete d["name"];
      if (isRecord(d["ipam"]) && Object.keys(d["ipam"]).length === 0) delete d["ipam"];
      m[key] = d;
    }
    out[kind] = m;
  }
  const objects: StackPlan["objects"] = [];
  for (const kind of ["configs", "secrets"] as const) {
    const top = model[kind];
    if (!isRecord(top)) continue;
    const m: Record<string, unknown> = {};
    for (const [key, def] of Object.entries(top)) {
      if (!isRecord(def)) continue;
      const d = { ...def };
      const file = d["file"];
      if (typeof file === "string") {
        // Swarm objects cannot change: a new content is a new object, and services move to it.
        const hash = createHash("sha256").update(await content(file)).digest("hex").slice(0, 12);
        d["name"] = `${project}_${key}_${hash}`;
        objects.push({ kind: kind === "configs" ? "config" : "secret", key, name: d["name"] as string });
      } else if (d["name"] === `${project}_${key}`) delete d["name"];
      m[key] = d;
    }
    out[kind] = m;
  }
  return {
    text: `${JSON.stringify(out, null, 1)}\n`,
    warnings,
    resolveImage: local ? "never" : "always",
    services: Object.keys(stackServices).sort(),
    objects,
  };
}

/** What `stack deploy` leaves out of one compose service, as `services.<name>.<key>: reason`. */
function serviceWarnings(name: string, def: Record<string, unknown>): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(def)) {
    if (v === null || v === undefined) continue;
    if (k in DROPPED && k !== "pull_policy" && k !== "profiles") out.push(`services.${name}.${k}: ${DROPPED[k]}`);
    if (k === "depends_on" && isRecord(v)) {
      const conditions = Object.values(v).some((d) => isRecord(d) && d["condition"] !== undefined && d["condition"] !== "service_started");
      if (conditions) out.push(`services.${name}.depends_on: Swarm does not wait for conditions (service_healthy, service_completed_successfully)`);
    }
  }
  return out;
}

/** The warnings planStack would give for a compose file as written (for `check`). */
export function stackWarnings(model: unknown): string[] {
  const services = isRecord(model) && isRecord(model["services"]) ? model["services"] : {};
  return Object.entries(services).flatMap(([name, def]) => (isRecord(def) ? serviceWarnings(name, def) : []));
}

/** Reads a config or secret file named by the model, never following a final symlink (a FileError otherwise). */
export async function readObjectFile(path: string): Promise<Uint8Array> {
  return readCapped(path, MAX_FILE_BYTES);
}
