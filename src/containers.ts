/**
 * Read-only container state from the Docker engine's API on its Unix socket. Asking the socket
 * costs no process, which keeps an idle cycle cheap; everything that changes containers goes
 * through the docker compose CLI.
 */
import { EngineError } from "./errors.ts";
import { isRecord, str, stringMap } from "./json.ts";

/** One container of a compose project. */
export interface ContainerInfo {
  id: string;
  project: string;
  service: string;
  /** created, running, paused, restarting, removing, exited, dead */
  state: string;
  /** From the healthcheck: "healthy", "unhealthy", "starting", or "" when there is none. */
  health: string;
  workingDir: string;
}

/** Reads container state; injected so tests can fake it. */
export interface Containers {
  /** Containers of one compose project (all states). */
  ofProject(project: string): Promise<ContainerInfo[]>;
  /** Containers of every compose project. */
  all(): Promise<ContainerInfo[]>;
}

/** The engine's socket path from DOCKER_HOST, else the default. */
export function dockerSocket(env: Record<string, string | undefined> = process.env): string {
  const host = env["DOCKER_HOST"];
  return host?.startsWith("unix://") ? host.slice("unix://".length) : "/var/run/docker.sock";
}

/**
 * One container from the engine's `/containers/json` answer, or null when it has no ID or state.
 * Only what pgod reads is kept: the compose labels, the state, the health in the status text.
 */
export function parseContainer(v: unknown): ContainerInfo | null {
  if (!isRecord(v) || typeof v["Id"] !== "string" || typeof v["State"] !== "string") return null;
  const labels = stringMap(v["Labels"]);
  return {
    id: v["Id"],
    state: v["State"],
    health: healthOf(str(v["Status"])),
    project: labels["com.docker.compose.project"] ?? "",
    service: labels["com.docker.compose.service"] ?? "",
    workingDir: labels["com.docker.compose.project.working_dir"] ?? "",
  };
}

/** Talks to the engine through its socket. */
export function makeDockerContainers(socket = dockerSocket(), timeoutMs = 10_000): Containers {
  const list = async (label: string): Promise<ContainerInfo[]> => {
    const filters = encodeURIComponent(JSON.stringify({ label: [label] }));
    const init: RequestInit & { unix: string } = { unix: socket, signal: AbortSignal.timeout(timeoutMs) };
    const res = await fetch(`http://docker/containers/json?all=1&filters=${filters}`, init);
    if (!res.ok) throw new EngineError(res.status, `Cannot list containers: the Docker engine answered ${res.status}`);
    const body: unknown = await res.json();
    if (!Array.isArray(body)) throw new EngineError(res.status, "Cannot list containers: the Docker engine's answer is not a list");
    return body.map(parseContainer).filter((c): c is ContainerInfo => c !== null);
  };
  return {
    ofProject: (project) => list(`com.docker.compose.project=${project}`),
    all: () => list("com.docker.compose.project"),
  };
}

/** Whether every expected compose service has a running container. */
export function allRunning(expected: readonly string[], containers: readonly ContainerInfo[]): boolean {
  if (expected.length === 0) return containers.length > 0 && containers.every((c) => isUp(c.state));
  return expected.every((s) => containers.some((c) => c.service === s && isUp(c.state)));
}

function isUp(state: string): boolean {
  // A restarting container is being handled by the engine's restart policy: leave it alone.
  return state === "running" || state === "restarting";
}

/** The health in a container's status text, such as "Up 5 seconds (health: starting)". */
export function healthOf(status: string): string {
  const m = /\((healthy|unhealthy|health: starting)\)/.exec(status);
  const h = m?.[1] ?? "";
  return h === "health: starting" ? "starting" : h;
}

/** The verdict on a project's containers after `up`: ready, not yet, or failed (and why). */
export function readiness(expected: readonly string[], containers: readonly ContainerInfo[]): { state: "ready" | "waiting" | "failed"; why: string } {
  for (const c of containers) {
    if (c.state === "exited" || c.state === "dead") return { state: "failed", why: `container of "${c.service}" ${c.state}` };
    if (c.health === "unhealthy") return { state: "failed", why: `container of "${c.service}" is unhealthy` };
  }
  for (const s of expected) {
    const mine = containers.filter((c) => c.service === s);
    if (mine.length === 0) return { state: "waiting", why: `no container of "${s}" yet` };
    for (const c of mine) {
      if (c.state !== "running") return { state: "waiting", why: `container of "${s}" is ${c.state}` };
      if (c.health === "starting") return { state: "waiting", why: `container of "${s}" is starting its healthcheck` };
    }
  }
  return { state: "ready", why: "" };
}
