/**
 * The Docker engine as the tests and the benchmark see it: the local test image, a compose file
 * that runs it, and the engine's container list over its socket.
 */

/** The local test image; compose files name it with `pull_policy: never`. */
export const IMAGE = "pgo-busybox:1";

/** The engine's socket. */
export const DOCKER_SOCKET: string = process.env["DOCKER_HOST"]?.startsWith("unix://")
  ? process.env["DOCKER_HOST"].slice("unix://".length)
  : "/var/run/docker.sock";

/**
 * A compose file with one service `web` running busybox httpd; `env` becomes its `environment`.
 * Without `network`, the service has `network_mode: none`: a bridge network per project costs
 * the engine seconds of iptables work when a dozen tests start projects at once.
 */
export function composeFile(o: { env?: Record<string, string>; command?: string[]; network?: boolean } = {}): string {
  const command = o.command ?? ["/bin/httpd", "-f", "-p", "8080"];
  let y = `services:
  web:
    image: ${IMAGE}
    pull_policy: never
    # httpd runs as PID 1 and ignores SIGTERM: do not make every stop wait 10 s.
    stop_signal: SIGKILL
    command: ${JSON.stringify(command)}
`;
  if (!o.network) y += "    network_mode: none\n";
  const env = Object.entries(o.env ?? {});
  if (env.length > 0) {
    y += "    environment:\n";
    for (const [k, v] of env) y += `      ${k}: ${JSON.stringify(v)}\n`;
  }
  return y;
}

/** A container as the engine's API lists it. */
export interface ApiContainer {
  Id: string;
  State: string;
  Labels: Record<string, string> | null;
}

/**
 * Every container (all states) with label `label` (`key` or `key=value`), as `docker ps --all
 * --filter label=...` lists them. This asks the engine's API on its socket rather than starting
 * a `docker` process: tests poll it several times a second each, and on two cores that many CLI
 * processes would slow pgod down more than anything it does itself.
 */
export async function listContainers(label: string, socket: string = DOCKER_SOCKET): Promise<ApiContainer[]> {
  const filters = encodeURIComponent(JSON.stringify({ label: [label] }));
  const res = await fetch(`http://docker/containers/json?all=1&filters=${filters}`, {
    unix: socket,
    signal: AbortSignal.timeout(10_000),
  } as RequestInit);
  if (!res.ok) throw new Error(`Cannot list containers: the engine answered ${res.status}: ${await res.text()}`);
  return (await res.json()) as ApiContainer[];
}
