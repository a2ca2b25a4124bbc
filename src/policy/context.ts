/** What every compose policy rule family shares: the context, violations, and the walk helpers. */
import { lstatSync, readlinkSync } from "node:fs";
import { dirname, join, resolve as resolvePath, sep } from "node:path";
import { isRecord } from "../json.ts";

/** One broken rule: which compose service, which key, which rule, and why. */
export interface Violation {
  /** The compose service, or "" for a top-level key. */
  service: string;
  /** Compose key path, such as `services.web.privileged` or `volumes.data.driver_opts`. */
  key: string;
  rule: string;
  reason: string;
  /** The offending value, when it helps (a path, a network name). */
  value?: string;
}

/** Who owns an existing volume or network: its name and its `com.docker.compose.project` label ("" when none). */
export interface EngineNames {
  volumes: ReadonlyMap<string, string>;
  networks: ReadonlyMap<string, string>;
}

export interface PolicyContext {
  project: string;
  /** Directory the model's relative paths were resolved against (the files being evaluated). */
  repoDir: string;
  /** `<datadir>/<name>`. */
  dataDir: string;
  /** Docker network names outside the project that may be joined; absent or empty allows none. */
  networks?: readonly string[];
  /** "rw" lets binds of the checkout be writable (config key `checkout_binds`); default read-only. */
  checkoutBinds?: "ro" | "rw";
  /** Logging drivers allowed beyond json-file, local and none (config key `logging_drivers`). */
  loggingDrivers?: readonly string[];
  /** Every configured service name (compose project), this one included. */
  projects?: readonly string[];
  /** The volumes and networks that exist in the engine, with their owner. */
  existing?: EngineNames;
  /** Resolves symlinks; for a path that does not exist, the deepest existing parent. */
  resolve?: (path: string) => string;
}

/** A rule: its id, the compose key it concerns, and a one-line reason (for errors and the manual). */
export interface Rule {
  rule: string;
  key: string;
  reason: string;
}

/** One service of the model. */
export interface Service {
  name: string;
  def: Record<string, unknown>;
}

/** The model and context as the rule families see them. */
export interface Walk {
  ctx: PolicyContext;
  project: string;
  model: Record<string, unknown>;
  services: Service[];
  /** Resolves symlinks (ctx.resolve or resolveExisting). */
  resolve(path: string): string;
  /** Whether a resolved path lies in the checkout or the data directory. */
  inside(real: string): boolean;
  /** Whether a resolved path lies in the checkout. */
  inCheckout(real: string): boolean;
  /** Whether `name` is exactly a service of this model. */
  ownService(name: string): boolean;
  /** Whether `name` is exactly a container name this project gives. */
  ownContainer(name: string): boolean;
  /** The other configured project whose names `name` falls among, if any (the longest project name owns a prefix). */
  foreign(name: string): string | undefined;
  /** Records a violation; `key` is relative to `services.<service>` unless service is "". */
  add(service: string, key: string, rule: string, value?: unknown): void;
}

/** The checks of one rule family. */
export type Family = (w: Walk) => void;

export function asList(v: unknown): unknown[] {
  return v === undefined || v === null ? [] : Array.isArray(v) ? v : [v];
}

/** Whether a value is set to something other than its harmless empty form. */
export function nonEmpty(v: unknown): boolean {
  if (v === undefined || v === null || v === false || v === "") return false;
  if (Array.isArray(v)) return v.length > 0;
  if (isRecord(v)) return Object.keys(v).length > 0;
  return true;
}

/** A value as one trimmed string (JSON for anything that is not a string). */
export function text(v: unknown): string {
  return typeof v === "string" ? v.trim() : JSON.stringify(v) ?? String(v);
}

export function within(path: string, root: string): boolean {
  return path === root || root === sep || path.startsWith(root + sep);
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

/** The top-level map `key` of the model (volumes, networks, secrets, configs), or an empty one. */
export function top(w: Walk, key: string): Record<string, unknown> {
  const v = w.model[key];
  return isRecord(v) ? v : {};
}
