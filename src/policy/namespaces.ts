/**
 * Rules on the kernel namespaces a container joins and the names it takes: host namespaces
 * are refused, and joins, links and names stay inside this project.
 */
import type { Rule, Walk } from "./context.ts";
import { isRecord } from "../json.ts";
import { asList, nonEmpty, text, top } from "./context.ts";

export const NAMESPACE_RULES: readonly Rule[] = [
  { rule: "network_host", key: "network_mode", reason: "the host's network namespace exposes every port the host listens on, localhost included" },
  { rule: "network_join", key: "network_mode", reason: "joining the network namespace of a container outside this project crosses into another project" },
  { rule: "ipc_host", key: "ipc", reason: "the host's IPC namespace exposes the shared memory and semaphores of host processes" },
  { rule: "ipc_shared", key: "ipc", reason: "sharing IPC with a container outside this project, or offering it with shareable, crosses project boundaries" },
  { rule: "pid_host", key: "pid", reason: "the host's PID namespace lets the container see and signal every process on the host" },
  { rule: "pid_join", key: "pid", reason: "joining the PID namespace of a container outside this project crosses into another project" },
  { rule: "userns_host", key: "userns_mode", reason: "userns_mode host turns off the engine's user-namespace remapping" },
  { rule: "uts_host", key: "uts", reason: "the host's UTS namespace lets the container change the host's hostname" },
  { rule: "cgroup_host", key: "cgroup", reason: "the host's cgroup namespace exposes the host's control groups" },
  { rule: "volumes_from", key: "volumes_from", reason: "volumes_from may name only services of this project; a container name reaches into another project's data" },
  { rule: "links", key: "links|external_links", reason: "links may name only services of this project; external links reach containers of other projects" },
  { rule: "container_name", key: "container_name", reason: "a container name must start with the project name and a dash, or it can take the name another project joins or links to" },
  { rule: "name_collision", key: "services|volumes|networks|container_name", reason: "the name falls among another configured project's names (its name followed by _ or -), so it could take that project's volume, network or container" },
  { rule: "compose_label", key: "labels|volumes.*.labels|networks.*.labels", reason: "labels under com.docker.compose. and com.docker.stack. are how docker compose, Swarm and pgod tell which project a container, volume or network belongs to" },
  { rule: "project_name", key: "name", reason: "the project name is the service's name in the config; another one would act on another project" },
];

/** The label keys of a labels value (a map, or a list of `key=value`). */
function labelKeys(labels: unknown): string[] {
  return isRecord(labels) ? Object.keys(labels) : asList(labels).map((l) => text(l).split("=")[0] ?? "");
}

const ownerLabel = (l: string): boolean => l.startsWith("com.docker.compose.") || l.startsWith("com.docker.stack.");

export function checkNamespaces(w: Walk): void {
  const name = w.model["name"];
  if (name !== undefined && name !== w.project) w.add("", "name", "project_name", name);
  for (const kind of ["volumes", "networks"]) {
    for (const [key, def] of Object.entries(top(w, kind))) {
      if (!isRecord(def)) continue;
      for (const l of labelKeys(def["labels"])) if (ownerLabel(l)) w.add("", `${kind}.${key}.labels`, "compose_label", l);
    }
  }
  for (const { name: svc, def } of w.services) {
    const mode = (key: string): string | null => (nonEmpty(def[key]) ? text(def[key]) : null);
    for (const l of labelKeys(def["labels"])) if (ownerLabel(l)) w.add(svc, "labels", "compose_label", l);
    // service:X is compose's own reference; container:X names a container, which must be ours.
    const joinsOwn = (v: string): boolean =>
      (v.startsWith("service:") && w.ownService(v.slice("service:".length))) ||
      (v.startsWith("container:") && w.ownContainer(v.slice("container:".length)));

    const net = mode("network_mode");
    if (net !== null) {
      const lower = net.toLowerCase();
      if (lower === "host") w.add(svc, "network_mode", "network_host", net);
      else if (lower.startsWith("container:") || lower.startsWith("service:")) {
        if (!joinsOwn(net)) w.add(svc, "network_mode", "network_join", net);
      } else if (lower !== "none") {
        // Any other value (bridge, default, a network's name) joins a network outside the project.
        const dockerName = lower === "default" ? "bridge" : net;
        if (!(w.ctx.networks ?? []).includes(dockerName)) w.add(svc, "network_mode", "network_not_allowed", dockerName);
      }
    }

    const ipc = mode("ipc");
    if (ipc !== null) {
      const lower = ipc.toLowerCase();
      if (lower === "host") w.add(svc, "ipc", "ipc_host", ipc);
      else if (!(lower === "private" || lower === "none" || joinsOwn(ipc))) w.add(svc, "ipc", "ipc_shared", ipc);
    }

    const pid = mode("pid");
    if (pid !== null) {
      if (pid.toLowerCase() === "host") w.add(svc, "pid", "pid_host", pid);
      else if (!joinsOwn(pid)) w.add(svc, "pid", "pid_join", pid);
    }
    // Neither key has a value that is safe: "host" is the only one docker knows besides the default.
    if (mode("userns_mode") !== null) w.add(svc, "userns_mode", "userns_host", def["userns_mode"]);
    if (mode("uts") !== null) w.add(svc, "uts", "uts_host", def["uts"]);
    const cgroup = mode("cgroup");
    if (cgroup !== null && cgroup.toLowerCase() !== "private") w.add(svc, "cgroup", "cgroup_host", cgroup);

    for (const from of asList(def["volumes_from"])) {
      const s = text(from);
      const ref = s.startsWith("service:") ? s.slice("service:".length) : s;
      if (ref.startsWith("container:") || !w.ownService(ref.replace(/:(ro|rw)$/, ""))) w.add(svc, "volumes_from", "volumes_from", s);
    }
    for (const link of asList(def["links"])) {
      const s = text(link);
      if (!w.ownService(s.split(":")[0] ?? "")) w.add(svc, "links", "links", s);
    }
    if (nonEmpty(def["external_links"])) w.add(svc, "external_links", "links", def["external_links"]);

    const cn = def["container_name"];
    if (cn !== undefined && cn !== null) {
      if (typeof cn !== "string" || !cn.startsWith(`${w.project}-`)) w.add(svc, "container_name", "container_name", cn);
      else if (w.foreign(cn) !== undefined) w.add(svc, "container_name", "name_collision", cn);
    }
    // Containers are named <project>-<service>-<n>; a built image <project>-<service>.
    if (w.foreign(`${w.project}-${svc}-1`) !== undefined || w.foreign(`${w.project}_${svc}_1`) !== undefined) {
      w.add(svc, "", "name_collision", `${w.project}-${svc}`);
    }
  }
}
