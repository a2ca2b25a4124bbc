/**
 * Services with `engine = "swarm"`: the compose model (as `docker compose config` resolves it,
 * `.env` included, after the same policy verdict) becomes a stack file (swarm_plan.ts) that
 * `docker stack deploy` reads from stdin (swarm_stack.ts); pgod waits for convergence itself
 * (one-shot services do not hang it, Swarm's own rollback and pause count as failures). The
 * docker CLI does the changes; the engine's socket is only read, and its JSON is checked where
 * it enters.
 */
import { engineEnv } from "./child_env.ts";
import type { Account } from "./users.ts";
import { EngineError } from "./errors.ts";
import { isRecord, num, str, stringMap } from "./json.ts";
import type { Runner } from "./exec.ts";

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
