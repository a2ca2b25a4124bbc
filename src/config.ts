/** The pgod config file: TOML with one `[[services]]` table per service, validated with line numbers. */

import { parse, TomlError } from "smol-toml";
import { ConfigError, errorMessage, type ConfigProblem } from "./errors.ts";
import { locate } from "./config_lines.ts";
import { checkService, typeName } from "./config_service.ts";
import { q } from "./config_values.ts";

/** A registry login from `[user:]token@registry`; user defaults to the service's user. */
export interface Registry {
  user: string;
  token: string;
  host: string;
}

/** The reload command from `machine:container//exec command args...`; the machine is ignored. */
export interface Reload {
  container: string;
  argv: string[];
}

/** An NFS mount from `nfs://host[:port]/path`; an IPv6 host comes without its brackets. */
export interface Mount {
  host: string;
  port?: number;
  path: string;
}

/** One reverse-proxy entry from `urls = { "site" = "host:port" }`. */
export interface Url {
  site: string;
  target: string;
}

/** One `[[services]]` table, with defaults applied. */
export interface ServiceConfig {
  name: string;
  user: string;
  repository: string;
  branch: string;
  compose?: string;
  registries: Registry[];
  env: Record<string, string>;
  /** Names of `env` in file order. */
  envKeys: string[];
  urls: Url[];
  networks?: string[];
  /** "rw" lets binds of the checkout be writable (the compose policy's default is read-only). */
  checkoutBinds?: "ro" | "rw";
  /** Logging drivers the compose policy allows beyond json-file, local and none. */
  loggingDrivers?: string[];
  import?: string;
  reload?: Reload;
  mount?: Mount;
  /** How long after `up` the containers may take to be running (and healthy), in ms. */
  healthTimeoutMs: number;
  /** Secret that push webhooks for this service are verified with. */
  webhookSecret?: string;
  /** `verify = "commits"`: deploy only commits signed by a trusted key (src/signatures.ts). */
  verify?: "commits";
  /** `trust_root`: the full id of the first commit the admin trusts; set exactly when `verify` is. */
  trustRoot?: string;
  /** `swarm` deploys with `docker stack deploy` on a Swarm manager; absent means docker compose. */
  engine?: "swarm";
  /** Files of extra age identities that may decrypt this service's `*.age` and SOPS files. */
  ageIdentities?: string[];
  /** Line of this service's `[[services]]` header. */
  line: number;
}

/** A validated config file. */
export interface Config {
  file: string;
  services: ServiceConfig[];
}

/** Reads and validates the config file; throws `ConfigError` (line 0 when it cannot be read). */
export async function loadConfig(file: string): Promise<Config> {
  let text: string;
  try {
    text = await Bun.file(file).text();
  } catch (e) {
    throw new ConfigError([{ file, line: 0, key: "", message: `Cannot read config file: ${errorMessage(e)}` }]);
  }
  return parseConfig(text, file);
}

/** Parses and validates config text; throws `ConfigError` holding every problem found. */
export function parseConfig(text: string, file: string): Config {
  let doc: Record<string, unknown>;
  try {
    doc = parse(text);
  } catch (e) {
    if (!(e instanceof TomlError)) throw e;
    const detail = (e.message.split("\n")[0] ?? "").replace(/^Invalid TOML document: /, "");
    throw new ConfigError([{ file, line: e.line, key: "", message: `Invalid TOML: ${detail}` }]);
  }
  const loc = locate(text);
  const problems: ConfigProblem[] = [];
  const servicesLine = loc.root.get("services") ?? 1;
  for (const key of Object.keys(doc)) {
    if (key !== "services") problems.push({ file, line: loc.root.get(key) ?? 1, key, message: `Unknown key ${q(key)}` });
  }
  const raw = doc["services"] ?? [];
  const services: ServiceConfig[] = [];
  if (!Array.isArray(raw)) {
    problems.push({
      file, line: servicesLine, key: "services",
      message: `Invalid type for "services": expected an array of tables ([[services]]), got ${typeName(raw)}`,
    });
  } else {
    // Blocks line up with entries unless the array was written inline (`services = [...]`).
    const blocks = loc.blocks.length === raw.length ? loc.blocks : [];
    const names = new Map<string, number>();
    raw.forEach((entry: unknown, i) => {
      const block = blocks[i];
      const lineOf = (key?: string): number =>
        (key === undefined ? undefined : block?.keys.get(key)) ?? block?.header ?? servicesLine;
      // Key paths count services from 1, as a reader counts [[services]] tables from the top.
      const path = `services[${i + 1}]`;
      const svc = checkService(entry, path, lineOf, (key, message) => {
        problems.push({ file, line: lineOf(key), key: key === undefined ? path : `${path}.${key}`, message });
      });
      if (svc === undefined) return;
      const first = names.get(svc.name);
      if (first !== undefined) {
        problems.push({
          file, line: lineOf("name"), key: `${path}.name`,
          message: `Duplicate service name ${q(svc.name)}: also used by services[${first}]`,
        });
      } else if (svc.name !== "") {
        names.set(svc.name, i + 1);
      }
      services.push(svc);
    });
  }
  if (problems.length > 0) throw new ConfigError(problems.sort((a, b) => a.line - b.line));
  return { file, services };
}
