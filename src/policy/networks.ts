/**
 * Rules on networks: a project makes plain bridge networks of its own; a network outside the
 * project is joined only when the admin allows it by name, and there the project answers only
 * to names in its own namespace.
 */
import { isIP } from "node:net";
import type { Rule, Walk } from "./context.ts";
import { isRecord } from "../json.ts";
import { asList, nonEmpty, text, top } from "./context.ts";

export const NETWORK_RULES: readonly Rule[] = [
  { rule: "network_not_allowed", key: "networks|network_mode", reason: "a network outside this project may be joined only when it is in the service's networks allow-list" },
  { rule: "network_driver", key: "networks.*.driver", reason: "only bridge networks stay inside the host; macvlan, ipvlan and overlay reach other machines' networks" },
  { rule: "network_options", key: "networks.*.driver_opts|networks.*.ipam", reason: "driver options can reuse a host bridge, and a chosen subnet or IPAM driver can shadow the host's own routes" },
  { rule: "network_in_use", key: "networks.*.name", reason: "a network of that name already exists and belongs to another project (its com.docker.compose.project label differs)" },
  { rule: "alias_outside", key: "networks.*.aliases", reason: "on a network shared with other projects, a name outside <project>- can steal another service's traffic" },
  { rule: "static_ip", key: "networks.*.ipv4_address|networks.*.ipv6_address", reason: "a fixed address on a network shared with other projects can take the address another container uses" },
  { rule: "ports", key: "ports", reason: "published ports listen on the host's interfaces; use expose and the Caddy proxy" },
  { rule: "mac_address", key: "mac_address", reason: "a chosen MAC address can impersonate another container on a shared network" },
  { rule: "extra_hosts", key: "extra_hosts|build.extra_hosts", reason: "extra hosts may map names to IP addresses only; host-gateway points at the host itself" },
];

export function checkNetworks(w: Walk): void {
  const networks = top(w, "networks");
  const allowed = new Set(w.ctx.networks ?? []);
  /** Keys of the networks that are the project's own: created by compose under <project>_<key>. */
  const own = new Set<string>();

  for (const [key, def] of Object.entries(networks)) {
    const d = isRecord(def) ? def : {};
    const at = `networks.${key}`;
    const ownName = `${w.project}_${key}`;
    const name = typeof d["name"] === "string" ? d["name"] : ownName;
    if (!nonEmpty(d["external"]) && name === ownName) {
      own.add(key);
      if (w.foreign(ownName) !== undefined) w.add("", at, "name_collision", ownName);
      else {
        const owner = w.ctx.existing?.networks.get(ownName);
        if (owner !== undefined && owner !== w.project) w.add("", at, "network_in_use", ownName);
      }
      if (nonEmpty(d["driver"]) && d["driver"] !== "bridge") w.add("", `${at}.driver`, "network_driver", d["driver"]);
      if (nonEmpty(d["driver_opts"])) w.add("", `${at}.driver_opts`, "network_options", d["driver_opts"]);
      const ipam = isRecord(d["ipam"]) ? d["ipam"] : {};
      for (const [k, v] of Object.entries(ipam)) {
        if (nonEmpty(v) && !(k === "driver" && v === "default")) w.add("", `${at}.ipam.${k}`, "network_options", v);
      }
      if (d["ipam"] !== undefined && d["ipam"] !== null && !isRecord(d["ipam"])) w.add("", `${at}.ipam`, "network_options", d["ipam"]);
    } else if (!allowed.has(name)) {
      // An external network, or one named like another project's: it exists outside this project.
      w.add("", at, "network_not_allowed", name);
    }
  }

  // Whether a name on a shared network is, or looks like, a name of another configured project.
  const others = (w.ctx.projects ?? []).filter((p) => p !== w.project && !`${w.project}-`.startsWith(`${p}-`));
  const othersName = (n: string): boolean => others.some((q) => n === q || n.startsWith(`${q}-`) || n.startsWith(`${q}_`));
  for (const { name: svc, def } of w.services) {
    if (nonEmpty(def["ports"])) w.add(svc, "ports", "ports", def["ports"]);
    if (nonEmpty(def["mac_address"])) w.add(svc, "mac_address", "mac_address", def["mac_address"]);
    checkHosts(w, svc, "extra_hosts", def["extra_hosts"]);
    const build = isRecord(def["build"]) ? def["build"] : {};
    checkHosts(w, svc, "build.extra_hosts", build["extra_hosts"]);

    const nets = def["networks"];
    const attachments: [string, unknown][] = Array.isArray(nets)
      ? nets.map((n) => [text(n), null])
      : isRecord(nets) ? Object.entries(nets) : [];
    for (const [key, att] of attachments) {
      if (own.has(key)) continue;
      // compose adds the service's name as an alias on every network it joins.
      if (othersName(svc)) {
        w.add(svc, `networks.${key}`, "alias_outside", svc);
      }
      if (!isRecord(att)) continue;
      for (const alias of asList(att["aliases"])) {
        const a = text(alias);
        if (!a.startsWith(`${w.project}-`) || w.foreign(a) !== undefined || othersName(a)) w.add(svc, `networks.${key}.aliases`, "alias_outside", a);
      }
      for (const k of ["ipv4_address", "ipv6_address"]) {
        if (nonEmpty(att[k])) w.add(svc, `networks.${key}.${k}`, "static_ip", att[k]);
      }
    }
  }
}

/** extra_hosts entries: `name=IP` or `name:IP` with a literal address (compose writes `=`). */
function checkHosts(w: Walk, svc: string, key: string, hosts: unknown): void {
  const list = isRecord(hosts) ? Object.entries(hosts).map(([k, v]) => `${k}=${text(v)}`) : asList(hosts).map(text);
  for (const h of list) {
    const eq = h.indexOf("=");
    const ip = eq >= 0 ? h.slice(eq + 1) : h.slice(h.indexOf(":") + 1);
    if (isIP(ip.replace(/^\[|\]$/g, "")) === 0) w.add(svc, key, "extra_hosts", h);
  }
}
