/**
 * Services with `engine = "swarm"`: the compose model (as `docker compose config` resolves it,
 * `.env` included, after the same policy verdict) becomes a stack file (swarm_plan.ts) that
 * `docker stack deploy` reads from stdin; pgod waits for convergence itself (one-shot services
 * do not hang it, Swarm's own rollback and pause count as failures). The docker CLI does the
 * changes; the engine's socket is only read, and its JSON is checked where it enters.
 */
import type { Compose, ComposeTarget } from "./compose.ts";
import { composeEnv, makeCompose } from "./compose.ts";
import { engineEnv } from "./child_env.ts";
import type { Account } from "./users.ts";
import { composeModel } from "./compose_model.ts";
import { CommandError, EngineError } from "./errors.ts";
import { isRecord, num, str, stringMap } from "./json.ts";
import type { RunResult, Runner } from "./exec.ts";
import { planStack, readObjectFile, type StackPlan } from "./swarm_plan.ts";

// Kept for reconcile.ts, which imports them from here (it is being split by another change):
// new code imports them from swarm_plan.ts.
export { stackWarnings } from "./swarm_plan.ts";
export type { StackPlan } from "./swarm_plan.ts";

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

/** A swarm service from the engine's JSON (the fields pgod reads), or null without an ID and a name. */
export function parseSwarmService(v: unknown): SwarmService | null {
  if (!isRecord(v) || typeof v["ID"] !== "string" || !isRecord(v["Spec"])) return null;
  const spec = v["Spec"];
  const name = spec["Name"];
  if (typeof name !== "string") return null;
  const mode = isRecord(spec["Mode"]) ? spec["Mode"] : {};
  const replicas = isRecord(mode["Replicated"]) ? num(mode["Replicated"]["Replicas"]) : undefined;
  const template = isRecord(spec["TaskTemplate"]) ? spec["TaskTemplate"] : null;
  const restart = template && isRecord(template["RestartPolicy"]) ? template["RestartPolicy"]["Condition"] : undefined;
  const update = isRecord(v["UpdateStatus"]) ? v["UpdateStatus"] : null;
  return {
    ID: v["ID"],
    Spec: {
      Name: name,
      Labels: stringMap(spec["Labels"]),
      Mode: {
        ...(isRecord(mode["Replicated"]) ? { Replicated: replicas !== undefined ? { Replicas: replicas } : {} } : {}),
        ...(isRecord(mode["Global"]) ? { Global: {} } : {}),
      },
      ...(template ? {
        TaskTemplate: {
          ...(template["ContainerSpec"] !== undefined ? { ContainerSpec: template["ContainerSpec"] } : {}),
          ...(typeof restart === "string" ? { RestartPolicy: { Condition: restart } } : {}),
        },
      } : {}),
    },
    ...(update ? { UpdateStatus: { State: str(update["State"]), Message: str(update["Message"]) } } : {}),
  };
}

/** A task from the engine's JSON (the fields pgod reads), or null without a service, a state or a status. */
export function parseSwarmTask(v: unknown): SwarmTask | null {
  if (!isRecord(v) || typeof v["ServiceID"] !== "string" || typeof v["DesiredState"] !== "string" || !isRecord(v["Status"])) return null;
  const st = v["Status"];
  if (typeof st["State"] !== "string") return null;
  const slot = num(v["Slot"]);
  const container = isRecord(st["ContainerStatus"]) ? str(st["ContainerStatus"]["ContainerID"]) : "";
  return {
    ServiceID: v["ServiceID"],
    DesiredState: v["DesiredState"],
    CreatedAt: str(v["CreatedAt"]),
    ...(slot !== undefined ? { Slot: slot } : {}),
    ...(typeof v["NodeID"] === "string" ? { NodeID: v["NodeID"] } : {}),
    ...(isRecord(v["Spec"]) ? { Spec: { ContainerSpec: v["Spec"]["ContainerSpec"] } } : {}),
    Status: {
      State: st["State"], Err: str(st["Err"]), Message: str(st["Message"]),
      ...(container !== "" ? { ContainerStatus: { ContainerID: container } } : {}),
    },
  };
}

/** The items of a JSON list that `parse` accepts (none when the answer is not a list). */
function listOf<T>(body: unknown, parse: (v: unknown) => T | null): T[] {
  return Array.isArray(body) ? body.map(parse).filter((x): x is T => x !== null) : [];
}

/** Talks to the engine through its socket. */
export function makeSwarmApi(socket: string, timeoutMs = 10_000): SwarmApi {
  const get = async (path: string): Promise<unknown> => {
    const what = path.split("?")[0] ?? path;
    const init: RequestInit & { unix: string } = { unix: socket, signal: AbortSignal.timeout(timeoutMs) };
    const res = await fetch(`http://docker${path}`, init);
    if (!res.ok) throw new EngineError(res.status, `Cannot read ${what}: the Docker engine answered ${res.status}`);
    return res.json();
  };
  return {
    async services(stack) {
      const f = encodeURIComponent(JSON.stringify({ label: [`com.docker.stack.namespace=${stack}`] }));
      return listOf(await get(`/services?filters=${f}`), parseSwarmService);
    },
    async tasks(ids) {
      if (ids.length === 0) return [];
      const f = encodeURIComponent(JSON.stringify({ service: ids }));
      return listOf(await get(`/tasks?filters=${f}`), parseSwarmTask);
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
      const rows = r.stdout.split("\n").map((l) => {
        const [name = "", created = ""] = l.split("\t");
        return { name, created };
      }).filter((x) => x.name !== "");
      for (const key of new Set(plan.objects.filter((x) => x.kind === kind).map((x) => x.key))) {
        const prefix = `${t.project}_${key}_`;
        const keep = new Set(plan.objects.filter((x) => x.kind === kind && x.key === key).map((x) => x.name));
        const old = rows.filter((x) => x.name.startsWith(prefix) && /^[0-9a-f]{12}$/.test(x.name.slice(prefix.length)) && !keep.has(x.name))
          .sort((a, b) => b.created.localeCompare(a.created));
        // Objects still used by a task cannot be removed: the engine refuses, and they go next time.
        for (const { name } of old.slice(2)) await docker([kind, "rm", name], kind);
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
        const container = here?.Status.ContainerStatus?.ContainerID;
        if (container === undefined) {
          const elsewhere = tasks.some((x) => x.DesiredState === "running" && x.Status.State === "running");
          const msg = elsewhere
            ? `Cannot exec in "${svc}": its tasks run on other nodes of the swarm, not on this manager`
            : `Cannot exec in "${svc}": it has no running task`;
          await say(io, msg);
          return result(1, msg);
        }
        return docker(["exec", "-i", container, ...cmd], "exec", io);
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
