/** Prometheus metrics and the HTTP server for /metrics and /healthz. */
import { collectDefaultMetrics, Counter, Gauge, Registry } from "prom-client";
import type { Tag } from "./exec.ts";
import type { Logger } from "./log.ts";
import type { DeployResult } from "./reconcile.ts";
import type { Replicas } from "./swarm.ts";
import { parseListenAddress } from "./ssh_server.ts";

/** pgod's metrics; one instance per daemon, injected where counted. */
export class Metrics {
  readonly registry = new Registry();
  // Names kept from the original without `_total` (DECISIONS.md #1): dashboards depend on them.
  readonly commands = new Counter({
    name: "pgo_command_count", help: "Counter for the number of commands executed.",
    labelNames: ["service", "cmd", "subcmd"], registers: [this.registry],
  });
  readonly commandErrors = new Counter({
    name: "pgo_command_error_count", help: "Counter for the number of commands executed that resulted in an error.",
    labelNames: ["service", "cmd", "subcmd"], registers: [this.registry],
  });
  readonly sshRequests = new Counter({
    name: "pgo_ssh_requests_total", help: "SSH requests by command and result (ok, error, denied, malformed, unavailable).",
    labelNames: ["command", "result"], registers: [this.registry],
  });
  readonly deploys = new Counter({
    name: "pgo_deploys_total", help: "Deploy attempts by service and result (deployed, failed, stopped, refused by the compose policy, unverified: a commit whose signature did not verify).",
    labelNames: ["service", "result"], registers: [this.registry],
  });
  readonly unverified = new Gauge({
    name: "pgo_service_head_unverified", help: "1 while the newest commit of a service that verifies commits is not verified (not deployed), else 0.",
    labelNames: ["service"], registers: [this.registry],
  });
  readonly up = new Gauge({
    name: "pgo_service_up", help: "1 while the service's last deploy succeeded and it is not stopped, else 0.",
    labelNames: ["service"], registers: [this.registry],
  });
  readonly lastDeploy = new Gauge({
    name: "pgo_service_last_deploy_timestamp_seconds", help: "Unix time of the service's last successful deploy.",
    labelNames: ["service"], registers: [this.registry],
  });

  readonly swarmReplicas = new Gauge({
    name: "pgo_swarm_replicas", help: "Replicas of each swarm service of a stack (engine = swarm), desired and running.",
    labelNames: ["service", "swarm_service", "state"], registers: [this.registry],
  });

  /** Without `processMetrics`, call collectProcessMetrics() later (pgod does once its ports listen). */
  constructor(processMetrics = true) {
    if (processMetrics) this.collectProcessMetrics();
  }

  private collecting = false;

  /** Adds the runtime's process metrics (CPU, memory, event loop lag); about 10 ms of work. */
  collectProcessMetrics(): void {
    if (this.collecting) return;
    this.collecting = true;
    // The event loop lag histogram samples on a timer of this period: prom-client's default
    // (10 ms) wakes an idle pgod 100 times a second, which cost more CPU than its polls
    // (bench/README.md). Once a second still catches a loop that stalls.
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: 1000 });
    // prom-client names these gauges `_total`, which `promtool check metrics` reports; the
    // gauges of the same name without `_total` (by type) carry the same counts.
    for (const name of ["nodejs_active_handles_total", "nodejs_active_requests_total", "nodejs_active_resources_total"]) {
      this.registry.removeSingleMetric(name);
    }
  }

  /** Counts a finished child process (the runner's observer). */
  observe = (tag: Tag, ok: boolean): void => {
    this.commands.inc({ ...tag });
    if (!ok) this.commandErrors.inc({ ...tag });
  };

  /** Records the desired and running replicas of a stack's services. */
  replicasOf = (service: string, replicas: readonly Replicas[]): void => {
    for (const r of replicas) {
      this.swarmReplicas.set({ service, swarm_service: r.service, state: "desired" }, r.desired);
      this.swarmReplicas.set({ service, swarm_service: r.service, state: "running" }, r.running);
    }
  };

  /** Records a deploy outcome. */
  deployed = (service: string, result: DeployResult): void => {
    this.deploys.inc({ service, result });
    // A refused compose file or unverified commit changes nothing that runs.
    if (result !== "refused" && result !== "unverified") this.up.set({ service }, result === "deployed" ? 1 : 0);
    if (result === "deployed") this.lastDeploy.set({ service }, Math.floor(Date.now() / 1000));
  };

  /** Records whether the newest commit judged by its signature verified. */
  verified = (service: string, ok: boolean): void => {
    this.unverified.set({ service }, ok ? 0 : 1);
  };
}

export interface MetricsServer {
  port: number;
  close(): Promise<void>;
}

/** Serves GET /metrics and GET /healthz (200 while `healthy()` holds, else 503). */
export function startMetricsServer(
  listen: string,
  metrics: Metrics,
  healthy: () => boolean,
  logger: Logger,
): MetricsServer {
  const addr = parseListenAddress(listen);
  const server = Bun.serve({
    port: addr.port,
    ...(addr.host ? { hostname: addr.host } : {}),
    async fetch(req) {
      const path = new URL(req.url).pathname;
      if (req.method !== "GET" && req.method !== "HEAD") return new Response("Method not allowed\n", { status: 405 });
      if (path === "/metrics") {
        return new Response(await metrics.registry.metrics(), { headers: { "content-type": metrics.registry.contentType } });
      }
      if (path === "/healthz") return healthy() ? new Response("ok\n") : new Response("unhealthy\n", { status: 503 });
      return new Response("Not found\n", { status: 404 });
    },
  });
  logger.info("metrics server listening", { address: `${server.hostname}:${server.port}` });
  return { port: server.port ?? 0, close: async () => void (await server.stop(true)) };
}
