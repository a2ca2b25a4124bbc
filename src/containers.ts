/**
 * Read-only container state from the Docker engine's API on its Unix socket. Asking the socket
 * costs no process, which keeps an idle cycle cheap; everything that changes containers goes
 * through the docker compose CLI.
 */

/** One container of a compose project. */
export interface ContainerInfo {
  id: string;
  project: string;
  service: string;
  /** created, running, paused, restarting, removing, exited, dead */
  state: string;
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

interface ApiContainer {
  Id: string;
  State: string;
  Labels: Record<string, string> | null;
}

/** Talks to the engine through its socket. */
export function makeDockerContainers(socket = dockerSocket(), timeoutMs = 10_000): Containers {
  const list = async (label: string): Promise<ContainerInfo[]> => {
    const filters = encodeURIComponent(JSON.stringify({ label: [label] }));
    const res = await fetch(`http://docker/containers/json?all=1&filters=${filters}`, {
      unix: socket,
      signal: AbortSignal.timeout(timeoutMs),
    } as RequestInit);
    if (!res.ok) throw new Error(`Cannot list containers: the Docker engine answered ${res.status}`);
    const body = (await res.json()) as ApiContainer[];
    return body.map((c) => ({
      id: c.Id,
      state: c.State,
      project: c.Labels?.["com.docker.compose.project"] ?? "",
      service: c.Labels?.["com.docker.compose.service"] ?? "",
      workingDir: c.Labels?.["com.docker.compose.project.working_dir"] ?? "",
    }));
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
