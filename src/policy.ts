/**
 * The compose policy for a non-root service (DECISIONS #13): an allow-list walk of the model
 * docker compose resolves (src/policy/schema.ts), then one family of rules per concern, each in
 * its own file under src/policy/ with the reason beside every rule.
 */
import { PolicyError } from "./errors.ts";
import { BUILD_RULES, checkBuild } from "./policy/build.ts";
import type { Family, PolicyContext, Rule, Service, Violation, Walk } from "./policy/context.ts";
import { isRecord } from "./json.ts";
import { resolveExisting, within } from "./policy/context.ts";
import { checkLogging, LOGGING_RULES } from "./policy/logging.ts";
import { checkNamespaces, NAMESPACE_RULES } from "./policy/namespaces.ts";
import { checkNetworks, NETWORK_RULES } from "./policy/networks.ts";
import { checkPrivileges, PRIVILEGE_RULES } from "./policy/privileges.ts";
import { checkResources, RESOURCE_RULES } from "./policy/resources.ts";
import { checkSchema, SCHEMA_RULES } from "./policy/schema.ts";
import { checkVolumes, VOLUME_RULES } from "./policy/volumes.ts";

export type { EngineNames, PolicyContext, Violation } from "./policy/context.ts";
export { resolveExisting } from "./policy/context.ts";

/** Every rule, with the compose key it concerns and a one-line reason (for errors and the manual). */
export const RULES: readonly Rule[] = [
  ...SCHEMA_RULES, ...PRIVILEGE_RULES, ...NAMESPACE_RULES, ...VOLUME_RULES, ...NETWORK_RULES,
  ...BUILD_RULES, ...RESOURCE_RULES, ...LOGGING_RULES,
];

const FAMILIES: readonly Family[] = [
  checkSchema, checkPrivileges, checkNamespaces, checkVolumes, checkNetworks, checkBuild, checkResources, checkLogging,
];

const REASON = new Map(RULES.map((r) => [r.rule, r.reason]));

/**
 * Checks a compose model (the output of `docker compose config --format json`) against the
 * allow-list and rules for a non-root service. The caller skips this for `user = "root"`.
 */
export function evaluatePolicy(model: unknown, ctx: PolicyContext): Violation[] {
  if (!isRecord(model)) throw new PolicyError("Cannot check the compose model: it is not a mapping");
  const resolve = ctx.resolve ?? resolveExisting;
  const checkout = resolve(ctx.repoDir);
  const roots = [checkout, resolve(ctx.dataDir)];
  const raw = isRecord(model["services"]) ? model["services"] : {};
  const services: Service[] = Object.entries(raw).map(([name, def]) => ({ name, def: isRecord(def) ? def : {} }));
  const serviceNames = new Set(services.map((s) => s.name));
  const containerNames = new Set(services.flatMap((s) => (typeof s.def["container_name"] === "string" ? [s.def["container_name"]] : [])));
  const others = (ctx.projects ?? []).filter((p) => p !== ctx.project && p.length > ctx.project.length);
  const out: Violation[] = [];
  const w: Walk = {
    ctx,
    project: ctx.project,
    model,
    services,
    resolve,
    inside: (real) => roots.some((r) => within(real, r)),
    inCheckout: (real) => within(real, checkout),
    ownService: (name) => serviceNames.has(name),
    ownContainer(name) {
      if (containerNames.has(name)) return true;
      // compose's own names, exactly: <project>-<service>-<n> (or with _ from compose v1).
      for (const sep of ["-", "_"]) {
        const head = `${ctx.project}${sep}`;
        const m = name.startsWith(head) ? new RegExp(`^(.+)${sep}([1-9][0-9]*)$`).exec(name.slice(head.length)) : null;
        if (m && serviceNames.has(m[1]!)) return true;
      }
      return false;
    },
    // Names of a longer project name that starts with ours are that project's: the longer name
    // owns the prefix, so "x" may not name a volume "vic_data" while "x_vic" is configured.
    foreign: (name) => others.find((q) => name.startsWith(`${q}_`) || name.startsWith(`${q}-`)),
    add(service, key, rule, value) {
      out.push({
        service,
        key: service === "" ? key : key === "" ? `services.${service}` : `services.${service}.${key}`,
        rule,
        reason: REASON.get(rule) ?? rule,
        ...(value !== undefined ? { value: typeof value === "string" ? value : JSON.stringify(value) } : {}),
      });
    },
  };
  for (const family of FAMILIES) family(w);
  return out;
}

/** One line per violation: `compose file "compose.yaml" service "web": "privileged" is refused (rule privileged): <reason>`. */
export function formatViolations(file: string, v: Violation[]): string {
  return v.map((x) => {
    const prefix = `services.${x.service}.`;
    const key = x.service && x.key.startsWith(prefix) ? x.key.slice(prefix.length) : x.key;
    const where = x.service ? ` service "${x.service}"` : "";
    return `compose file "${file}"${where}: "${key}" is refused (rule ${x.rule}): ${x.reason}${x.value !== undefined ? `: "${x.value}"` : ""}`;
  }).join("\n");
}
