/** Rules on what root in the container may do to the host kernel: privileges, devices, runtimes. */
import type { Rule, Walk } from "./context.ts";
import { isRecord } from "../json.ts";
import { asList, nonEmpty, text } from "./context.ts";

export const PRIVILEGE_RULES: readonly Rule[] = [
  { rule: "privileged", key: "privileged", reason: "a privileged container has every capability and every host device, which makes it root on the host" },
  { rule: "cap_add", key: "cap_add", reason: "added capabilities widen what root in the container may do to the host kernel" },
  { rule: "security_opt", key: "security_opt", reason: "only no-new-privileges is allowed: the other options turn off or replace seccomp, AppArmor or SELinux confinement" },
  { rule: "devices", key: "devices|device_cgroup_rules|gpus|deploy.resources.reservations.devices", reason: "host devices and GPUs give direct access to hardware and to data outside the container" },
  { rule: "runtime", key: "runtime", reason: "another OCI runtime may run the container with other isolation, or none" },
  { rule: "isolation", key: "isolation", reason: "isolation selects how the engine separates the container from the host" },
  { rule: "annotations", key: "annotations", reason: "runtimes read OCI annotations as configuration of the container's isolation" },
  { rule: "group_add", key: "group_add", reason: "supplementary groups are numbered as on the host, so a group such as the docker group's opens whatever such files reach the container" },
];

const FLAGS: readonly (readonly [string, string])[] = [
  ["privileged", "privileged"], ["cap_add", "cap_add"], ["devices", "devices"], ["device_cgroup_rules", "devices"],
  ["gpus", "devices"], ["runtime", "runtime"], ["isolation", "isolation"], ["annotations", "annotations"], ["group_add", "group_add"],
];

/** no-new-privileges, as `no-new-privileges`, `no-new-privileges:true` or `=true`. */
const NO_NEW_PRIVILEGES = /^no-new-privileges([:=]true)?$/i;

export function checkPrivileges(w: Walk): void {
  for (const { name, def } of w.services) {
    for (const [key, rule] of FLAGS) {
      if (nonEmpty(def[key])) w.add(name, key, rule, def[key]);
    }
    for (const opt of asList(def["security_opt"])) {
      if (!NO_NEW_PRIVILEGES.test(text(opt))) w.add(name, "security_opt", "security_opt", opt);
    }
    const deploy = isRecord(def["deploy"]) ? def["deploy"] : {};
    const res = isRecord(deploy["resources"]) ? deploy["resources"] : {};
    const resv = isRecord(res["reservations"]) ? res["reservations"] : {};
    for (const key of ["devices", "generic_resources"]) {
      if (nonEmpty(resv[key])) w.add(name, `deploy.resources.reservations.${key}`, "devices", resv[key]);
    }
  }
}
