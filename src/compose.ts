/** The docker compose CLI for one service, and what a compose file depends on. */
import { statSync } from "node:fs";
import { basename, isAbsolute, posix } from "node:path";
import { parse as parseYaml } from "yaml";
import type { Registry } from "./config.ts";
import { CommandError, errorMessage } from "./errors.ts";
import type { RunResult, Runner, Tag } from "./exec.ts";
import type { Account } from "./users.ts";
import { baseEnv, engineEnv } from "./child_env.ts";

/** Compose file names docker compose looks for, in its order. */
export const COMPOSE_FILES = ["compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml"] as const;

const COMPOSE_TIMEOUT_MS = 15 * 60_000;
const MAX_DEPENDENCY_BYTES = 1024 * 1024;
const QUICK_TIMEOUT_MS = 60_000;

export interface ComposeTarget {
  project: string;
  /** The checkout the project runs from. */
  dir: string;
  /** The compose file, relative to `dir`. */
  file: string;
  account: Account;
  env: Record<string, string>;
  /** Per-service DOCKER_CONFIG directory. */
  dockerConfig?: string;
}

export interface ExecIO {
  onStdout?: (chunk: Uint8Array) => Promise<void> | void;
  onStderr?: (chunk: Uint8Array) => Promise<void> | void;
  signal?: AbortSignal;
}

/** docker compose operations for one project. */
export interface Compose {
  /** Runs `docker compose -p P -f F <args>`; `subcmd` labels metrics. Never throws on exit status. */
  run(args: string[], io?: ExecIO & { timeoutMs?: number }): Promise<RunResult>;
  /** Like run, but throws a CommandError on failure. */
  must(args: string[], timeoutMs?: number): Promise<RunResult>;
  /** The names of the services that `up` starts (`config --services`). */
  services(): Promise<string[]>;
  /**
   * Logs in to each registry (token on stdin, never in argv), runs `fn`, and logs out of exactly
   * those registries, whatever `fn` did. Credentials land in the service's own DOCKER_CONFIG.
   */
  withRegistries<T>(registries: readonly Registry[], fn: () => Promise<T>): Promise<T>;
}

/** The environment of every docker compose child of a service. */
export function composeEnv(t: ComposeTarget): Record<string, string> {
  const env: Record<string, string> = { ...t.env, ...baseEnv(t.account) };
  // The engine is pgod's to choose, not the service's (engineEnv).
  for (const k of ["DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"]) delete env[k];
  Object.assign(env, engineEnv());
  if (t.dockerConfig) env["DOCKER_CONFIG"] = t.dockerConfig;
  return env;
}

/** Makes the compose wrapper. The project name is always passed, so a file's `name:` cannot take over another project. */
export function makeCompose(runner: Runner, t: ComposeTarget): Compose {
  const base = ["docker", "compose", "--project-name", t.project, "--file", t.file];
  const env = composeEnv(t);
  const tag = (args: string[]): Tag => ({ service: t.project, cmd: "compose", subcmd: subcommandOf(args) });
  const run: Compose["run"] = (args, io = {}) =>
    runner([...base, ...args], {
      cwd: t.dir,
      env,
      as: t.account,
      timeoutMs: io.timeoutMs ?? COMPOSE_TIMEOUT_MS,
      tag: tag(args),
      check: false,
      ...(io.signal ? { signal: io.signal } : {}),
      ...(io.onStdout ? { onStdout: io.onStdout } : {}),
      ...(io.onStderr ? { onStderr: io.onStderr } : {}),
    });
  const must: Compose["must"] = (args, timeoutMs = COMPOSE_TIMEOUT_MS) =>
    runner([...base, ...args], { cwd: t.dir, env, as: t.account, timeoutMs, tag: tag(args) });
  const docker = (args: string[], subcmd: string, stdin?: string) =>
    runner(["docker", ...args], {
      cwd: t.dir, env, as: t.account, timeoutMs: QUICK_TIMEOUT_MS, tag: { service: t.project, cmd: "docker", subcmd },
      ...(stdin !== undefined ? { stdin } : {}),
    });
  return {
    run,
    must,
    async withRegistries(registries, fn) {
      const done: Registry[] = [];
      try {
        for (const r of registries) {
          try {
            await docker(["login", "--username", r.user, "--password-stdin", r.host], "login", r.token);
          } catch (e) {
            const why = e instanceof CommandError ? e.stderrTail.trim().split("\n").pop() ?? "" : errorMessage(e);
            throw new Error(`Cannot log in to registry "${r.host}" as "${r.user}": ${why}`);
          }
          done.push(r);
        }
        return await fn();
      } finally {
        for (const r of done) await docker(["logout", r.host], "logout").catch(() => {});
      }
    },
    async services() {
      const r = await must(["config", "--services"], QUICK_TIMEOUT_MS);
      return r.stdout.split("\n").map((s) => s.trim()).filter(Boolean).sort();
    },
  };
}

const KNOWN_SUBCOMMANDS = new Set([
  "up", "down", "stop", "start", "restart", "pull", "ps", "logs", "exec", "config", "ls", "kill", "rm",
]);

/** A bounded label for a compose argv: the subcommand, or "other". */
export function subcommandOf(args: readonly string[]): string {
  const first = args.find((a) => !a.startsWith("-")) ?? "";
  return KNOWN_SUBCOMMANDS.has(first) ? first : "other";
}

/** Picks the compose file: the configured one, or the first of COMPOSE_FILES that exists. */
export function findComposeFile(exists: (rel: string) => boolean, configured?: string): string | null {
  if (configured !== undefined) return exists(configured) ? configured : null;
  return COMPOSE_FILES.find((f) => exists(f)) ?? null;
}

/**
 * The compose file of a commit and its text, read through `read` (a path to its text, or null):
 * the configured file (its text null when the commit lacks it), else the first of COMPOSE_FILES
 * the commit has, else null.
 */
export async function composeFileAt(
  read: (rel: string) => Promise<string | null>,
  configured?: string,
): Promise<{ file: string; text: string | null } | null> {
  if (configured !== undefined) return { file: configured, text: await read(configured) };
  for (const file of COMPOSE_FILES) {
    const text = await read(file);
    if (text !== null) return { file, text };
  }
  return null;
}

/**
 * The files a compose model depends on, relative to the repository root: the compose file, `.env`
 * beside it, and every `include`, `env_file` and `extends.file` it names, followed recursively.
 * Returns "all" when a path cannot be known without interpolation (it names a `${VAR}`), so the
 * caller treats any change as relevant.
 */
export async function composeDependencies(
  read: (path: string) => Promise<string | null>,
  composeFile: string,
): Promise<Set<string> | "all"> {
  const deps = new Set<string>();
  const queue = [posix.normalize(composeFile)];
  const projectDir = posix.dirname(posix.normalize(composeFile));
  deps.add(posix.join(projectDir, ".env"));
  let unknown = false;
  const add = (base: string, p: unknown): void => {
    if (typeof p !== "string") return;
    if (p.includes("$")) {
      unknown = true;
      return;
    }
    if (posix.isAbsolute(p)) return; // outside the repository: not something a commit changes
    const full = posix.normalize(posix.join(base, p));
    if (full.startsWith("../")) return;
    if (!deps.has(full)) {
      deps.add(full);
      if (/\.(ya?ml)$/.test(full)) queue.push(full);
    }
  };
  const seen = new Set<string>();
  while (queue.length > 0 && seen.size < 200) {
    const file = queue.shift()!;
    if (seen.has(file)) continue;
    seen.add(file);
    deps.add(file);
    const text = await read(file);
    if (text === null) continue;
    // Too big to read cheaply: count every change as relevant (the policy screen refuses it later).
    if (text.length > MAX_DEPENDENCY_BYTES) return "all";
    let doc: unknown;
    try {
      doc = parseYaml(text, { maxAliasCount: 100 });
    } catch {
      continue; // docker compose will say what is wrong with it at deploy time
    }
    if (!isMap(doc)) continue;
    const dir = posix.dirname(file);
    for (const inc of asList(doc["include"])) {
      if (typeof inc === "string") add(dir, inc);
      else if (isMap(inc)) {
        for (const p of asList(inc["path"])) add(dir, p);
        for (const p of asList(inc["env_file"])) add(dir, p);
        if (typeof inc["project_directory"] === "string") add(dir, posix.join(inc["project_directory"], ".env"));
      }
    }
    const services = doc["services"];
    if (!isMap(services)) continue;
    for (const svc of Object.values(services)) {
      if (!isMap(svc)) continue;
      for (const ef of asList(svc["env_file"])) add(projectDir, isMap(ef) ? ef["path"] : ef);
      const ext = svc["extends"];
      if (isMap(ext)) add(dir, ext["file"]);
    }
  }
  return unknown ? "all" : deps;
}

function isMap(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function asList(v: unknown): unknown[] {
  return v === undefined || v === null ? [] : Array.isArray(v) ? v : [v];
}

/**
 * The compose plugin the docker CLI would run (`docker info` lists it), when it is an executable
 * every service user may run; else null, and pgod keeps calling `docker compose` (a docker that
 * is not Docker's CLI, such as the tests' shim, lists none).
 */
export async function findComposePlugin(runner: Runner, env: Record<string, string>): Promise<string | null> {
  const format = '{{range .ClientInfo.Plugins}}{{if eq .Name "compose"}}{{.Path}}{{end}}{{end}}';
  const r = await runner(["docker", "info", "--format", format], { env, check: false, timeoutMs: 30_000 }).catch(() => null);
  const path = r?.stdout.trim() ?? "";
  if (!isAbsolute(path) || basename(path) !== "docker-compose") return null;
  try {
    const st = statSync(path);
    return st.isFile() && (st.mode & 0o001) !== 0 ? path : null;
  } catch {
    return null;
  }
}

/** `docker compose -p P down` without a compose file (compose finds containers by label). */
export async function downProject(runner: Runner, project: string, env: Record<string, string>, as?: Account): Promise<void> {
  await runner(["docker", "compose", "--project-name", project, "down", "--remove-orphans"], {
    cwd: "/",
    env: { ...env, ...engineEnv() },
    timeoutMs: 5 * 60_000,
    tag: { service: project, cmd: "compose", subcmd: "down" },
    ...(as ? { as } : {}),
  });
}
