/** Rules on resources: a container may limit itself further, never lift the limits the host keeps. */
import type { Rule, Walk } from "./context.ts";
import { isRecord } from "../json.ts";
import { nonEmpty, text } from "./context.ts";

export const RESOURCE_RULES: readonly Rule[] = [
  { rule: "oom_score_adj", key: "oom_score_adj", reason: "a negative OOM score makes the kernel kill host processes and other projects before this container" },
  { rule: "oom_kill_disable", key: "oom_kill_disable", reason: "a container the OOM killer may not kill can hold the host's memory" },
  { rule: "pids_limit", key: "pids_limit|deploy.resources.limits.pids", reason: "an unlimited process count (-1 or 0) lets a fork bomb exhaust the host's process table" },
  { rule: "cgroup_parent", key: "cgroup_parent", reason: "another parent cgroup escapes the limits and accounting the engine sets for containers" },
  { rule: "cpu_rt", key: "cpu_rt_runtime|cpu_rt_period", reason: "real-time CPU time can starve every other process on the host" },
  { rule: "ulimits", key: "ulimits", reason: "only nofile, nproc, core, stack and memlock, up to a bound each and never unlimited, keep a container from exhausting host resources" },
  { rule: "sysctls", key: "sysctls", reason: "only net.* sysctls are set in the container's own network namespace; kernel.* and fs.* ones change the host kernel or namespaces shared with it" },
];

/** The largest value of each allowed ulimit (soft and hard). */
const ULIMIT_MAX: Readonly<Record<string, number>> = {
  nofile: 1_048_576,
  nproc: 65_536,
  core: 1 << 30,
  stack: 64 << 20,
  memlock: 64 << 20,
};

export function checkResources(w: Walk): void {
  for (const { name: svc, def } of w.services) {
    const adj = def["oom_score_adj"];
    if (nonEmpty(adj) && !(typeof adj === "number" && adj >= 0 && adj <= 1000)) w.add(svc, "oom_score_adj", "oom_score_adj", adj);
    if (nonEmpty(def["oom_kill_disable"])) w.add(svc, "oom_kill_disable", "oom_kill_disable", def["oom_kill_disable"]);
    if (nonEmpty(def["cgroup_parent"])) w.add(svc, "cgroup_parent", "cgroup_parent", def["cgroup_parent"]);
    for (const key of ["cpu_rt_runtime", "cpu_rt_period"]) {
      if (nonEmpty(def[key])) w.add(svc, key, "cpu_rt", def[key]);
    }
    const pids = (key: string, v: unknown): void => {
      // compose leaves the key out when it is not set; a set value must be a positive bound.
      if (v !== undefined && v !== null && !(typeof v === "number" && v > 0)) w.add(svc, key, "pids_limit", v);
    };
    pids("pids_limit", def["pids_limit"]);
    const deploy = isRecord(def["deploy"]) ? def["deploy"] : {};
    const res = isRecord(deploy["resources"]) ? deploy["resources"] : {};
    const limits = isRecord(res["limits"]) ? res["limits"] : {};
    pids("deploy.resources.limits.pids", limits["pids"]);

    const ulimits = def["ulimits"];
    if (nonEmpty(ulimits)) {
      if (!isRecord(ulimits)) w.add(svc, "ulimits", "ulimits", ulimits);
      else {
        for (const [name, v] of Object.entries(ulimits)) {
          const max = Object.hasOwn(ULIMIT_MAX, name) ? ULIMIT_MAX[name]! : -1;
          const values = isRecord(v) ? [v["soft"], v["hard"]] : [v];
          const ok = max > 0 && (!isRecord(v) || Object.keys(v).every((k) => k === "soft" || k === "hard")) &&
            values.every((x) => typeof x === "number" && Number.isInteger(x) && x >= 0 && x <= max);
          if (!ok) w.add(svc, `ulimits.${name}`, "ulimits", v);
        }
      }
    }

    const sysctls = def["sysctls"];
    if (nonEmpty(sysctls)) {
      const entries: [string, unknown][] = isRecord(sysctls)
        ? Object.entries(sysctls)
        : Array.isArray(sysctls) ? sysctls.map((s) => { const t = text(s); const i = t.indexOf("="); return [i < 0 ? t : t.slice(0, i), t.slice(i + 1)]; }) : [[text(sysctls), ""]];
      for (const [k, v] of entries) {
        if (!/^net\.[a-z0-9_.\-/]+$/i.test(k) || typeof v === "object") w.add(svc, `sysctls.${k}`, "sysctls", v);
      }
    }
  }
}
