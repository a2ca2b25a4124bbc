/**
 * The allow-list: every key a non-root service's resolved compose model may hold, level by
 * level (DECISIONS #13). A key that is not here is refused with its full path, so a Compose key
 * nobody has reviewed stays refused until it is added on purpose. Keys marked "ruled" are known
 * but judged by a rule family (refused outright, or allowed only with some values).
 */
import type { Rule, Walk } from "./context.ts";
import { isRecord } from "../json.ts";

/**
 * "any": any value (strings, lists, maps of plain data the engine takes as such).
 * "ruled": a rule family judges the value; the walk does not look inside.
 * An object: a mapping with exactly these keys (or a list of such mappings, or a short-syntax
 * string); `each` instead: a mapping of arbitrary names (or a list) whose values have that shape.
 */
export type Shape = "any" | "ruled" | { keys: Record<string, Shape> } | { each: Shape };

const keys = (k: Record<string, Shape>): Shape => ({ keys: k });
const each = (s: Shape): Shape => ({ each: s });

/** A reference to a top-level secret or config from a service or a build. */
const FILE_REF = keys({ source: "any", target: "any", uid: "any", gid: "any", mode: "any" });

/** Swarm's rolling update and rollback settings. */
const ROLLOUT = keys({ parallelism: "any", delay: "any", failure_action: "any", monitor: "any", max_failure_ratio: "any", order: "any" });

const BUILD: Shape = keys({
  context: "ruled",
  dockerfile: "ruled",
  dockerfile_inline: "any",
  args: "any",
  labels: "any",
  target: "any",
  secrets: FILE_REF,
  network: "ruled",
  extra_hosts: "ruled",
  no_cache: "any",
  pull: "any",
  shm_size: "any",
  platforms: "any",
  cache_from: "ruled",
  // Refused by the build family, each with its reason.
  privileged: "ruled",
  entitlements: "ruled",
  tags: "ruled",
  ssh: "ruled",
  cache_to: "ruled",
  additional_contexts: "ruled",
  isolation: "ruled",
});

const SERVICE: Shape = keys({
  // What runs and as whom, inside the container.
  image: "ruled",
  command: "any",
  entrypoint: "any",
  environment: "any",
  env_file: "ruled",
  working_dir: "any",
  user: "any",
  init: "any",
  stdin_open: "any",
  tty: "any",
  platform: "any",
  attach: "any",
  pull_policy: "any",
  profiles: "any",
  labels: "ruled",
  hostname: "any",
  domainname: "any",
  dns: "any",
  dns_search: "any",
  dns_opt: "any",
  read_only: "any",
  tmpfs: "any",
  stop_signal: "any",
  stop_grace_period: "any",
  restart: "any",
  scale: "any",
  expose: "any",
  cap_drop: "any",
  healthcheck: keys({ test: "any", interval: "any", timeout: "any", retries: "any", start_period: "any", start_interval: "any", disable: "any" }),
  depends_on: each(keys({ condition: "any", required: "any", restart: "any" })),
  logging: keys({ driver: "ruled", options: "any" }),
  secrets: FILE_REF,
  configs: FILE_REF,
  build: BUILD,
  volumes: keys({
    type: "ruled",
    source: "ruled",
    target: "any",
    read_only: "ruled",
    consistency: "any",
    bind: keys({ create_host_path: "any", propagation: "ruled", selinux: "ruled" }),
    volume: keys({ nocopy: "any", subpath: "ruled" }),
    tmpfs: keys({ size: "any", mode: "any" }),
  }),
  networks: each(keys({ aliases: "ruled", ipv4_address: "ruled", ipv6_address: "ruled", priority: "any" })),
  deploy: keys({
    replicas: "any",
    resources: keys({
      limits: keys({ cpus: "any", memory: "any", pids: "ruled" }),
      reservations: keys({ cpus: "any", memory: "any", devices: "ruled", generic_resources: "ruled" }),
    }),
    restart_policy: keys({ condition: "any", delay: "any", max_attempts: "any", window: "any" }),
    // How Swarm rolls a stack's service (engine = "swarm"); docker compose ignores them.
    update_config: ROLLOUT,
    rollback_config: ROLLOUT,
    mode: "any",
    endpoint_mode: "any",
    // Where Swarm places a stack's tasks (engine = "swarm"): it picks among the swarm's own
    // nodes, which reaches nothing that another node would not; docker compose adds it empty.
    placement: keys({ constraints: "any", preferences: "any", max_replicas_per_node: "any" }),
  }),
  // Resources.
  mem_limit: "any",
  mem_reservation: "any",
  memswap_limit: "any",
  mem_swappiness: "any",
  cpus: "any",
  cpu_shares: "any",
  cpu_quota: "any",
  cpu_period: "any",
  cpu_count: "any",
  cpu_percent: "any",
  cpuset: "any",
  shm_size: "any",
  pids_limit: "ruled",
  oom_score_adj: "ruled",
  ulimits: "ruled",
  sysctls: "ruled",
  // Judged by the families: allowed with some values only, or refused.
  container_name: "ruled",
  network_mode: "ruled",
  pid: "ruled",
  ipc: "ruled",
  uts: "ruled",
  cgroup: "ruled",
  userns_mode: "ruled",
  links: "ruled",
  external_links: "ruled",
  volumes_from: "ruled",
  extra_hosts: "ruled",
  ports: "ruled",
  mac_address: "ruled",
  privileged: "ruled",
  cap_add: "ruled",
  security_opt: "ruled",
  devices: "ruled",
  device_cgroup_rules: "ruled",
  gpus: "ruled",
  runtime: "ruled",
  isolation: "ruled",
  annotations: "ruled",
  group_add: "ruled",
  cgroup_parent: "ruled",
  oom_kill_disable: "ruled",
  cpu_rt_runtime: "ruled",
  cpu_rt_period: "ruled",
});

/** The whole model. */
export const MODEL: Shape = keys({
  name: "ruled",
  services: each(SERVICE),
  volumes: each(keys({ name: "ruled", driver: "ruled", driver_opts: "ruled", labels: "ruled", external: "ruled" })),
  networks: each(keys({
    name: "ruled", driver: "ruled", driver_opts: "ruled", ipam: "ruled", internal: "any", attachable: "any",
    labels: "ruled", enable_ipv6: "any", external: "ruled",
  })),
  secrets: each(keys({ name: "any", file: "ruled", environment: "any", external: "ruled" })),
  configs: each(keys({ name: "any", file: "ruled", environment: "any", content: "any", external: "ruled" })),
});

export const SCHEMA_RULES: readonly Rule[] = [
  { rule: "unknown_key", key: "services|volumes|networks|secrets|configs", reason: "a compose key that is not on the allow-list has not been reviewed for what it lets a container reach" },
];

/** Refuses every key of the model that the allow-list does not hold, with its full path. */
export function checkSchema(w: Walk): void {
  walk(w, w.model, MODEL, { svc: "", rel: "" });
}

/** `rel` is the path below `services.<svc>` (or from the top when svc is ""). */
function walk(w: Walk, value: unknown, shape: Shape, at: { svc: string; rel: string }): void {
  if (shape === "any" || shape === "ruled") return;
  if (Array.isArray(value)) {
    value.forEach((item, i) => walk(w, item, shape, { svc: at.svc, rel: `${at.rel}[${i}]` }));
    return;
  }
  if (!isRecord(value)) return; // short syntax, or a scalar compose itself rejects
  for (const [k, v] of Object.entries(value)) {
    // Extension keys are compose's comments: nothing reads them.
    if (k.startsWith("x-")) continue;
    const next = at.svc === "" && at.rel === "services"
      ? { svc: k, rel: "" }
      : { svc: at.svc, rel: at.rel === "" ? k : `${at.rel}.${k}` };
    if ("each" in shape) {
      walk(w, v, shape.each, next);
      continue;
    }
    const sub = Object.hasOwn(shape.keys, k) ? shape.keys[k] : undefined;
    if (sub === undefined) w.add(next.svc, next.rel, "unknown_key");
    else walk(w, v, sub, next);
  }
}
