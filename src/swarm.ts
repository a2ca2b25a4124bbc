/**
 * Services with `engine = "swarm"`: the compose model (as `docker compose config` resolves it,
 * `.env` included, after the same policy verdict) becomes a stack file that `docker stack deploy`
 * reads from stdin; configs and secrets get content-hashed names so a change rotates them; pgod
 * waits for convergence itself (one-shot services do not hang it, Swarm's own rollback and pause
 * count as failures). The docker CLI does the changes; the engine's socket is only read.
 */
import { createHash } from "node:crypto";
import type { Compose, ComposeTarget } from "./compose.ts";
import { composeEnv, makeCompose } from "./compose.ts";
import { engineEnv } from "./child_env.ts";
import type { Account } from "./users.ts";
import { composeModel } from "./compose_model.ts";
import { CommandError } from "./errors.ts";
import { readCapped } from "./files.ts";
import { isRecord } from "./json.ts";
import type { RunResult, Runner } from "./exec.ts";

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

// ---------------------------------------------------------------------------------------------
// The engine's view of a stack (read-only, over its socket)

/** One swarm service as the engine reports it (the fields pgod reads). */
export interface SwarmService {
  ID: string;
  Spec: {
    Name: string;
    Labels?: Record<string, string>;
    Mode?: { Replicated?: { Replicas?: number }; Global?: Record<string, never> };
    TaskTemplate?: { ContainerSpec?: unknown; RestartPolicy?: { Condition?: string } };
  };
  UpdateStatus?: { State?: string; Message?: string };
}

/** One task. */
export interface SwarmTask {
  ServiceID: string;
  DesiredState: string;
  CreatedAt: string;
  Slot?: number;
  NodeID?: string;
  Spec?: { ContainerSpec?: unknown };
  Status: { State: string; Err?: string; Message?: string; ContainerStatus?: { ContainerID?: string } };
}

/** Read-only engine queries for stacks; injected so tests can fake them. */
export interface SwarmApi {
  services(stack: string): Promise<SwarmService[]>;
  tasks(serviceIds: string[]): Promise<SwarmTask[]>;
  /** The engine's own node ID ("" when it is not in a swarm). */
  nodeId(): Promise<string>;
  /** How many containers of the stack exist on this node (any state). */
  containers(stack: string): Promise<number>;
}

/** Talks to the engine through its socket. */
export function makeSwarmApi(socket: string, timeoutMs = 10_000): SwarmApi {
  const get = async (path: string): Promise<unknown> => {
    const res = await fetch(`http://docker${path}`, { unix: socket, signal: AbortSignal.timeout(timeoutMs) } as RequestInit);
    if (!res.ok) throw new Error(`Cannot read ${path.split("?")[0]}: the Docker engine answered ${res.status}`);
    return res.json();
  };
  return {
    async services(stack) {
      const f = encodeURIComponent(JSON.stringify({ label: [`com.docker.stack.namespace=${stack}`] }));
      const body = await get(`/services?filters=${f}`);
      return Array.isArray(body) ? (body as SwarmService[]) : [];
    },
    async tasks(ids) {
      if (ids.length === 0) return [];
      const f = encodeURIComponent(JSON.stringify({ service: ids }));
      const body = await get(`/tasks?filters=${f}`);
      return Array.isArray(body) ? (body as SwarmTask[]) : [];
    },
    async containers(stack) {
      const f = encodeURIComponent(JSON.stringify({ label: [`com.docker.stack.namespace=${stack}`] }));
      const body = await get(`/containers/json?all=1&filters=${f}`);
      return Array.isArray(body) ? body.length : 0;
    },
    async nodeId() {
      const info = await get("/info");
      const s = isRecord(info) && isRecord(info["Swarm"]) ? info["Swarm"] : {};
      return typeof s["NodeID"] === "string" ? s["NodeID"] : "";
    },
  };
}

const FAILED_UPDATES = new Set(["rollback_started", "rollback_paused", "rollback_completed", "paused"]);

/** Replica counts of one service: desired and running (for metrics and status). */
export interface Replicas {
  service: string;
  desired: number;
  running: number;
}

/**
 * The verdict on a stack after a deploy started at `since` (ms): ready when every service runs
 * its desired replicas of its current spec (healthy: Swarm reports a task with a healthcheck as
 * running only once healthy); failed when Swarm rolled back or paused an update, or a task of
 * the current spec failed or was rejected; one-shot services (restart condition none) are ready
 * once their tasks completed.
 */
export function stackReadiness(
  stack: string,
  expected: readonly string[],
  services: readonly SwarmService[],
  tasks: readonly SwarmTask[],
  since: number,
): { state: "ready" | "waiting" | "failed"; why: string; replicas: Replicas[] } {
  const replicas: Replicas[] = [];
  let waiting = "";
  for (const name of expected) {
    const full = `${stack}_${name}`;
    const s = services.find((x) => x.Spec.Name === full);
    if (!s) {
      waiting ||= `no swarm service "${full}" yet`;
      continue;
    }
    const update = s.UpdateStatus?.State ?? "";
    if (FAILED_UPDATES.has(update)) {
      return { state: "failed", why: `swarm service "${full}": update ${update.replace("_", " ")}${s.UpdateStatus?.Message ? `: ${s.UpdateStatus.Message}` : ""}`, replicas };
    }
    const spec = canonical(s.Spec.TaskTemplate?.ContainerSpec);
    const mine = tasks.filter((t) => t.ServiceID === s.ID);
    const current = mine.filter((t) => canonical(t.Spec?.ContainerSpec) === spec);
    const fresh = current.filter((t) => Date.parse(t.CreatedAt) >= since - 1000);
    const broken = fresh.find((t) => t.Status.State === "failed" || t.Status.State === "rejected");
    if (broken) {
      return { state: "failed", why: `task of "${full}" ${broken.Status.State}: ${broken.Status.Err || broken.Status.Message || "no reason given"}`, replicas };
    }
    const oneShot = s.Spec.TaskTemplate?.RestartPolicy?.Condition === "none";
    const running = current.filter((t) => t.DesiredState === "running" && t.Status.State === "running").length;
    const global = s.Spec.Mode?.Global !== undefined;
    const desired = global ? Math.max(1, new Set(current.filter((t) => t.DesiredState === "running").map((t) => t.NodeID)).size) : s.Spec.Mode?.Replicated?.Replicas ?? 1;
    replicas.push({ service: name, desired, running });
    if (update === "updating") {
      waiting ||= `swarm service "${full}" is updating`;
      continue;
    }
    if (oneShot) {
      const done = current.filter((t) => t.Status.State === "complete" || t.Status.State === "running").length;
      if (done < desired) waiting ||= `one-shot "${full}": ${done} of ${desired} tasks started`;
      continue;
    }
    if (running < desired) waiting ||= `swarm service "${full}": ${running} of ${desired} replicas running`;
  }
  return waiting ? { state: "waiting", why: waiting, replicas } : { state: "ready", why: "", replicas };
}

/** JSON with sorted keys, so two specs compare by content. */
function canonical(v: unknown): string {
  const sort = (x: unknown): unknown => {
    if (Array.isArray(x)) return x.map(sort);
    if (isRecord(x)) return Object.fromEntries(Object.keys(x).sort().map((k) => [k, sort(x[k])]));
    return x;
  };
  return JSON.stringify(sort(v ?? null));
}

// ---------------------------------------------------------------------------------------------
// The Compose interface, for a stack

const DEPLOY_TIMEOUT_MS = 15 * 60_000;
const QUICK_TIMEOUT_MS = 60_000;

/** What makeSwarm needs besides the runner. */
export interface SwarmOptions {
  api: SwarmApi;
  /** The service's cgroup(s) for `docker compose config` (see makeCgroups). */
  cgroupDir?: string | readonly string[];
  /** Called with the plan of each deploy (metrics, warnings). */
  onPlan?: (plan: StackPlan) => void;
  /** Waits while the stack is being removed; ms between polls (default 500). */
  pollMs?: number;
}

/**
 * The Compose operations pgod and pgoctl use, done with `docker stack` and `docker service` for
 * the stack named after the project: up deploys, down and stop remove the stack, ps lists tasks,
 * logs reads service logs, exec runs in a task on this node.
 */
export function makeSwarm(runner: Runner, t: ComposeTarget, o: SwarmOptions): Compose {
  const env = composeEnv(t);
  const compose = makeCompose(runner, t);
  const docker = (args: string[], subcmd: string, io: Parameters<Compose["run"]>[1] = {}, stdin?: string): Promise<RunResult> =>
    runner(["docker", ...args], {
      cwd: t.dir, env, as: t.account, check: false,
      timeoutMs: io.timeoutMs ?? QUICK_TIMEOUT_MS,
      tag: { service: t.project, cmd: "docker", subcmd },
      ...(stdin !== undefined ? { stdin } : {}),
      ...(io.signal ? { signal: io.signal } : {}),
      ...(io.onStdout ? { onStdout: io.onStdout } : {}),
      ...(io.onStderr ? { onStderr: io.onStderr } : {}),
    });
  const model = (): Promise<unknown> =>
    composeModel(runner, t, { profiles: "active", ...(o.cgroupDir ? { cgroupDir: o.cgroupDir } : {}) });
  const say = async (io: Parameters<Compose["run"]>[1], text: string): Promise<void> => {
    await io?.onStderr?.(new TextEncoder().encode(`${text}\n`));
  };
  const result = (exitCode: number, stderr = ""): RunResult => ({ exitCode, signal: null, stdout: "", stderr, durationMs: 0, timedOut: false });

  const deploy = async (io: Parameters<Compose["run"]>[1] = {}): Promise<RunResult> => {
    let plan: StackPlan;
    try {
      plan = await planStack(await model(), t.project, readObjectFile);
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      await say(io, msg);
      return result(1, msg);
    }
    o.onPlan?.(plan);
    const r = await docker(
      ["stack", "deploy", "--compose-file", "-", "--with-registry-auth", "--prune", "--resolve-image", plan.resolveImage, "--detach=true", t.project],
      "stack", { ...io, timeoutMs: io.timeoutMs ?? DEPLOY_TIMEOUT_MS }, plan.text,
    );
    if (r.exitCode === 0) await pruneObjects(plan).catch(() => {});
    return r;
  };

  /** Removes config and secret revisions of this stack beyond the newest three of each key. */
  const pruneObjects = async (plan: StackPlan): Promise<void> => {
    for (const kind of ["config", "secret"] as const) {
      const r = await docker([kind, "ls", "--filter", `label=com.docker.stack.namespace=${t.project}`, "--format", "{{.Name}}\t{{.CreatedAt}}"], kind);
      if (r.exitCode !== 0) continue;
      const rows = r.stdout.split("\n").map((l) => l.split("\t")).filter((x) => x[0]);
      for (const key of new Set(plan.objects.filter((x) => x.kind === kind).map((x) => x.key))) {
        const prefix = `${t.project}_${key}_`;
        const keep = new Set(plan.objects.filter((x) => x.kind === kind && x.key === key).map((x) => x.name));
        const old = rows.filter((x) => x[0]!.startsWith(prefix) && /^[0-9a-f]{12}$/.test(x[0]!.slice(prefix.length)) && !keep.has(x[0]!))
          .sort((a, b) => (b[1] ?? "").localeCompare(a[1] ?? ""));
        // Objects still used by a task cannot be removed: the engine refuses, and they go next time.
        for (const [name] of old.slice(2)) await docker([kind, "rm", name!], kind);
      }
    }
  };

  const remove = async (io: Parameters<Compose["run"]>[1] = {}): Promise<RunResult> => {
    const r = await docker(["stack", "rm", t.project], "stack", io);
    if (r.exitCode !== 0) return r;
    // stack rm returns before the services, tasks and networks are gone; a deploy right after
    // would find the old network. Wait (bounded, 60 s) until no service or container is left.
    for (let i = 0; i < 120; i++) {
      if ((await o.api.services(t.project)).length === 0 && (await o.api.containers(t.project)) === 0) break;
      await Bun.sleep(o.pollMs ?? 500);
    }
    return r;
  };

  const services = async (): Promise<string[]> => (await planStack(await model(), t.project, async () => new Uint8Array())).services;

  const run: Compose["run"] = async (args, io = {}) => {
    const [sub, ...rest] = args[0] === "--profile" ? args.slice(2) : args;
    switch (sub) {
      case "up":
      case "start":
        return deploy(io);
      case "restart": {
        const names = rest.filter((a) => !a.startsWith("-"));
        const which = names.length > 0 ? names : await services();
        let last = result(0);
        for (const n of which) {
          last = await docker(["service", "update", "--force", "--detach", `${t.project}_${n}`], "service", io);
          if (last.exitCode !== 0) return last;
        }
        return last;
      }
      case "down":
      case "stop":
        return remove(io);
      case "pull":
        // Every node pulls what it runs at deploy (with --with-registry-auth): nothing to do here.
        return result(0);
      case "ps":
        return docker(["stack", "ps", "--no-trunc", t.project], "stack", io);
      case "logs": {
        const opts: string[] = [];
        const names: string[] = [];
        for (let i = 0; i < rest.length; i++) {
          const a = rest[i]!;
          if (a === "-n" || a === "--tail" || a === "--since" || a === "--until") opts.push(a, rest[++i] ?? "");
          else if (a.startsWith("-")) opts.push(a);
          else names.push(a);
        }
        const which = names.length > 0 ? names : await services();
        const results = await Promise.all(which.map((n) => docker(["service", "logs", ...opts, `${t.project}_${n}`], "service", io)));
        return results.find((r) => r.exitCode !== 0) ?? results[0] ?? result(0);
      }
      case "exec": {
        const argv = rest.filter((a, i) => !(i === 0 && a === "-T"));
        const [svc, ...cmd] = argv;
        const node = await o.api.nodeId();
        const all = await o.api.services(t.project);
        const s = all.find((x) => x.Spec.Name === `${t.project}_${svc}`);
        const tasks = s ? await o.api.tasks([s.ID]) : [];
        const here = tasks.find((x) => x.DesiredState === "running" && x.Status.State === "running" && x.NodeID === node && x.Status.ContainerStatus?.ContainerID);
        if (!here) {
          const elsewhere = tasks.some((x) => x.DesiredState === "running" && x.Status.State === "running");
          const msg = elsewhere
            ? `Cannot exec in "${svc}": its tasks run on other nodes of the swarm, not on this manager`
            : `Cannot exec in "${svc}": it has no running task`;
          await say(io, msg);
          return result(1, msg);
        }
        return docker(["exec", "-i", here.Status.ContainerStatus!.ContainerID!, ...cmd], "exec", io);
      }
      case "config":
        return compose.run(args, io);
      default: {
        const msg = `Cannot run "${sub}" for a swarm service`;
        await say(io, msg);
        return result(64, msg);
      }
    }
  };

  return {
    run,
    async must(args, timeoutMs) {
      const r = await run(args, timeoutMs !== undefined ? { timeoutMs } : {});
      if (r.exitCode !== 0) throw new CommandError({ argv: ["docker", "stack", ...args], cwd: t.dir, exitCode: r.exitCode, stderrTail: r.stderr });
      return r;
    },
    services,
    withRegistries: (registries, fn) => compose.withRegistries(registries, fn),
  };
}


/** `docker stack rm` without a compose file (the stack's services are found by its name). */
export async function removeStack(runner: Runner, project: string, env: Record<string, string>, as?: Account): Promise<void> {
  await runner(["docker", "stack", "rm", project], {
    cwd: "/",
    env: { ...env, ...engineEnv() },
    timeoutMs: 60_000,
    tag: { service: project, cmd: "docker", subcmd: "stack" },
    ...(as ? { as } : {}),
  });
}
