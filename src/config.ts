/** The pgod config file: TOML with one `[[services]]` table per service, validated with line numbers. */

import { parse, TomlError } from "smol-toml";
import { ConfigError, errorMessage, type ConfigProblem } from "./errors.ts";
import { parseDuration } from "./duration.ts";
import { splitShellWords } from "./shell_words.ts";
import { parseTarget } from "./target.ts";

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

/** Every key a `[[services]]` table accepts. */
export const SERVICE_KEYS: readonly string[] = [
  "name", "user", "repository", "branch", "compose", "registries",
  "env", "urls", "networks", "import", "reload", "mount", "health_timeout", "webhook_secret",
  "verify", "trust_root", "age_identities", "engine",
];

/** Default of `health_timeout`: how long a deploy may take to become running and healthy. */
export const DEFAULT_HEALTH_TIMEOUT_MS = 120_000;

const NAME = /^[a-z0-9][a-z0-9_-]*$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const HOST = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;
const IPV6 = /^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(%[A-Za-z0-9_.-]+)?$/;
const CONTAINER = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const CONTROL = /[\x00-\x1f\x7f]/;

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

type Report = (key: string | undefined, message: string) => void;

/** Validates one service table, reporting each problem; returns the service with defaults applied. */
function checkService(
  entry: unknown,
  path: string,
  lineOf: (key?: string) => number,
  report: Report,
): ServiceConfig | undefined {
  if (!isTable(entry)) {
    report(undefined, `Invalid type for "${path}": expected a table, got ${typeName(entry)}`);
    return undefined;
  }
  for (const key of Object.keys(entry)) {
    if (!SERVICE_KEYS.includes(key)) report(key, `Unknown key ${q(key)}`);
  }
  for (const key of ["name", "user", "repository"]) {
    if (entry[key] === undefined) report(key, `Missing required key ${q(key)}`);
  }
  const invalid = (key: string, value: string, why: string): void =>
    report(key, `Invalid value ${q(value)} for ${q(key)}: ${why}`);
  const str = (key: string): string | undefined => {
    const v = entry[key];
    if (v === undefined || typeof v === "string") return v;
    report(key, `Invalid type for ${q(key)}: expected a string, got ${typeName(v)}`);
    return undefined;
  };
  const strs = (key: string): string[] | undefined => {
    const v = entry[key];
    if (v === undefined) return undefined;
    if (!Array.isArray(v)) {
      report(key, `Invalid type for ${q(key)}: expected an array of strings, got ${typeName(v)}`);
      return undefined;
    }
    v.forEach((x: unknown, i) => {
      if (typeof x !== "string") report(key, `Invalid type for entry ${i + 1} of ${q(key)}: expected a string, got ${typeName(x)}`);
    });
    return v.filter((x: unknown): x is string => typeof x === "string");
  };

  const name = str("name");
  if (name !== undefined && !(NAME.test(name) && name.length <= 63)) {
    invalid("name", name, `expected a compose project name: lower-case letters, digits, "_" and "-", starting with a letter or digit, at most 63 characters`);
  }
  const user = str("user");
  if (user !== undefined && (user === "" || /[\s:]/.test(user) || CONTROL.test(user))) {
    invalid("user", user, `expected a user name without whitespace or ":"`);
  }
  // Never quote the repository: an HTTPS URL may carry a token.
  const repository = str("repository");
  if (repository === "") invalid("repository", "", "expected a git URL");
  else if (repository !== undefined && (repository.startsWith("-") || /\s/.test(repository) || CONTROL.test(repository))) {
    report("repository", `Invalid value for "repository": a git URL cannot start with "-" or contain whitespace or control characters`);
  }
  const branch = str("branch");
  const branchWhy = branch === undefined ? undefined : branchProblem(branch);
  if (branch !== undefined && branchWhy !== undefined) invalid("branch", branch, branchWhy);

  const svc: ServiceConfig = {
    name: name ?? "",
    user: user ?? "",
    repository: repository ?? "",
    branch: branch ?? "main",
    registries: [],
    env: Object.create(null) as Record<string, string>, // no prototype: "__proto__" is a valid variable name
    envKeys: [],
    urls: [],
    healthTimeoutMs: DEFAULT_HEALTH_TIMEOUT_MS,
    line: lineOf(),
  };

  const health = str("health_timeout");
  if (health !== undefined) {
    let ms = NaN;
    try {
      ms = parseDuration(health);
    } catch {
      // reported below
    }
    if (!(ms >= 1000 && ms <= 3_600_000)) invalid("health_timeout", health, `expected a Go duration from 1s to 1h, such as "90s"`);
    else svc.healthTimeoutMs = ms;
  }
  // A secret: never quoted in messages.
  const secret = str("webhook_secret");
  if (secret !== undefined) {
    if (secret.length < 16 || CONTROL.test(secret)) report("webhook_secret", `Invalid value for "webhook_secret": expected at least 16 characters without control characters`);
    else svc.webhookSecret = secret;
  }

  const verify = str("verify");
  if (verify !== undefined && verify !== "commits") invalid("verify", verify, `expected "commits" (deploy only signed commits), or no "verify" key`);
  const root = str("trust_root");
  if (root !== undefined && !/^[0-9a-f]{40}$/.test(root)) invalid("trust_root", root, "expected a full commit id: 40 lower-case hex digits");
  if (verify === "commits" && root === undefined) report("verify", `Missing key "trust_root": "verify" needs the first commit to trust`);
  if (root !== undefined && verify === undefined) report("trust_root", `Key "trust_root" needs verify = "commits"`);
  if (verify === "commits" && root !== undefined && /^[0-9a-f]{40}$/.test(root)) {
    svc.verify = verify;
    svc.trustRoot = root;
  }

  for (const key of ["compose", "import"] as const) {
    const p = str(key);
    if (p === undefined) continue;
    const why = relativePathProblem(p);
    if (why !== undefined) invalid(key, p, why);
    else svc[key] = p;
  }

  const reload = str("reload");
  if (reload !== undefined) {
    const r = parseReload(reload);
    if (typeof r === "string") invalid("reload", reload, r);
    else svc.reload = r;
  }

  const mount = str("mount");
  if (mount !== undefined) {
    const m = parseMount(mount);
    if (typeof m === "string") invalid("mount", mount, m);
    else svc.mount = m;
  }

  // Registry entries and env values hold secrets: name the entry by number, never by value.
  strs("registries")?.forEach((e, i) => {
    const r = parseRegistry(e, svc.user);
    if (typeof r === "string") report("registries", `Invalid entry ${i + 1} for "registries": ${r}`);
    else svc.registries.push(r);
  });

  const seen = new Map<string, number>();
  strs("env")?.forEach((e, i) => {
    const eq = e.indexOf("=");
    const key = e.slice(0, eq);
    const bad = (why: string): void => report("env", `Invalid entry ${i + 1} for "env": ${why}`);
    if (eq < 0) return bad(`expected "KEY=VALUE"`);
    if (!ENV_NAME.test(key)) return bad("the variable name must match [A-Za-z_][A-Za-z0-9_]*");
    if (e.includes("\0")) return bad("the value cannot contain a NUL character");
    const first = seen.get(key);
    if (first !== undefined) return report("env", `Duplicate variable ${q(key)} in "env": entries ${first} and ${i + 1}`);
    seen.set(key, i + 1);
    svc.env[key] = e.slice(eq + 1);
    svc.envKeys.push(key);
  });

  const urls = entry["urls"];
  if (urls !== undefined && !isTable(urls)) {
    report("urls", `Invalid type for "urls": expected a table of strings, got ${typeName(urls)}`);
  } else if (urls !== undefined) {
    for (const [site, target] of Object.entries(urls)) {
      if (site === "" || /[\s{}"`#]/.test(site) || CONTROL.test(site)) {
        report("urls", `Invalid site address ${q(site)} in "urls": expected no whitespace, quotes, "{", "}" or "#"`);
      } else if (typeof target !== "string") {
        report("urls", `Invalid type for ${q(site)} in "urls": expected a string, got ${typeName(target)}`);
      } else {
        const hp = hostPort(target);
        const why = typeof hp === "string" ? hp : hp.port === undefined ? "missing port" : undefined;
        if (why !== undefined) report("urls", `Invalid value ${q(target)} for ${q(site)} in "urls": expected "host:port": ${why}`);
        else svc.urls.push({ site, target });
      }
    }
  }

  const engine = str("engine");
  if (engine !== undefined && engine !== "compose" && engine !== "swarm") {
    invalid("engine", engine, 'expected "compose" or "swarm"');
  } else if (engine === "swarm") svc.engine = "swarm";

  const identities = strs("age_identities");
  identities?.forEach((f, i) => {
    if (!f.startsWith("/") || CONTROL.test(f)) report("age_identities", `Invalid entry ${i + 1} for "age_identities": expected an absolute path to an age identity file`);
  });
  if (identities !== undefined) svc.ageIdentities = identities;

  const networks = strs("networks");
  networks?.forEach((n, i) => {
    if (n === "" || /\s/.test(n) || CONTROL.test(n)) {
      report("networks", `Invalid entry ${i + 1} for "networks": expected a network name without whitespace`);
    }
  });
  if (networks !== undefined) svc.networks = networks;
  return svc;
}

/** Why `b` is not a valid git branch name (git check-ref-format), or undefined. */
function branchProblem(b: string): string | undefined {
  if (b === "") return "expected a git branch name";
  if (b.startsWith("-")) return `a git branch name cannot start with "-"`;
  if (/[\s~^:?*[\\]/.test(b) || CONTROL.test(b)) return `a git branch name cannot contain whitespace or any of "~^:?*[\\"`;
  if (b.includes("..")) return `a git branch name cannot contain ".."`;
  if (b.includes("@{") || b === "@") return `a git branch name cannot contain "@{" or be "@"`;
  const parts = b.split("/");
  if (parts.some((c) => c === "" || c.startsWith(".") || c.endsWith(".lock")) || b.endsWith(".")) {
    return `a git branch name cannot have empty components, components starting with "." or ending in ".lock", or end with "."`;
  }
  return undefined;
}

/** Why `p` is not a relative path inside the repository, or undefined. */
function relativePathProblem(p: string): string | undefined {
  if (p === "") return "expected a path relative to the repository";
  if (p.includes("\0")) return "the path cannot contain a NUL character";
  if (p.startsWith("/")) return "expected a path relative to the repository, not an absolute path";
  const segments: string[] = [];
  for (const s of p.split("/")) {
    if (s === "" || s === ".") continue;
    if (s !== "..") segments.push(s);
    else if (segments.pop() === undefined) return "the path leaves the repository";
  }
  if (segments.length === 0) return "the path names the repository itself";
  if (segments[0] === ".git") return `the path cannot be inside ".git"`;
  return undefined;
}

/** Parses `machine:container//exec command args...`, or returns why it is invalid. */
function parseReload(s: string): Reload | string {
  const form = `expected "machine:container//exec command [args...]"`;
  const slashes = s.indexOf("//");
  if (slashes < 0) return form;
  const ws = s.slice(slashes).search(/\s/);
  const end = ws < 0 ? s.length : slashes + ws;
  let container: string;
  try {
    const t = parseTarget(s.slice(0, end));
    if (t.command !== "exec") return `the command must be "exec", got ${q(t.command)}`;
    container = t.service;
  } catch {
    return form;
  }
  if (!CONTAINER.test(container)) return `invalid container name ${q(container)}`;
  let argv: string[];
  try {
    // Blank out the target so that columns in errors count from the start of the value.
    argv = splitShellWords(" ".repeat(end) + s.slice(end));
  } catch (e) {
    return lowerFirst(errorMessage(e));
  }
  if (argv.length === 0) return `missing the command to run after "exec"`;
  return { container, argv };
}

/** Parses `nfs://host[:port]/path`, or returns why it is invalid. */
function parseMount(s: string): Mount | string {
  const form = `expected "nfs://host[:port]/path"`;
  if (!s.startsWith("nfs://")) return form;
  const rest = s.slice("nfs://".length);
  const slash = rest.indexOf("/");
  if (slash < 0) return `${form}: missing path`;
  const hp = hostPort(rest.slice(0, slash));
  if (typeof hp === "string") return `${form}: ${hp}`;
  const path = rest.slice(slash);
  if (CONTROL.test(path)) return `${form}: the path cannot contain control characters`;
  return hp.port === undefined ? { host: hp.host, path } : { host: hp.host, port: hp.port, path };
}

/** Parses `[user:]token@registry` (split at the last "@": a registry has none), or returns why it is invalid. */
function parseRegistry(e: string, defaultUser: string): Registry | string {
  const at = e.lastIndexOf("@");
  if (at < 0) return `expected "[user:]token@registry"`;
  const host = e.slice(at + 1);
  if (host === "") return `missing registry after "@"`;
  if (host.startsWith("-") || /\s/.test(host) || CONTROL.test(host)) return `invalid registry ${q(host)}`;
  const cred = e.slice(0, at);
  const colon = cred.indexOf(":");
  const user = colon < 0 ? defaultUser : cred.slice(0, colon);
  const token = cred.slice(colon + 1);
  if (colon >= 0 && user === "") return `missing user before ":"`;
  if (token === "") return "missing token";
  return { user, token, host };
}

/** Splits `host[:port]` (an IPv6 address in brackets), or returns why it is invalid. */
function hostPort(s: string): { host: string; port: number | undefined } | string {
  let host: string;
  let port: string | undefined;
  const m = /^\[([^\]]*)\](?::(.*))?$/.exec(s);
  if (m) {
    host = m[1]!;
    port = m[2];
    if (!IPV6.test(host)) return `invalid IPv6 address ${q(host)}`;
  } else {
    const parts = s.split(":");
    if (parts.length > 2) return "an IPv6 address must be in brackets";
    host = parts[0]!;
    port = parts[1];
    if (host === "") return "missing host";
    if (!HOST.test(host)) return `invalid host ${q(host)}`;
  }
  if (port === undefined) return { host, port: undefined };
  if (!/^\d{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535) return `port ${q(port)} is not in 1-65535`;
  return { host, port: Number(port) };
}

/** Where keys are in the source: smol-toml gives no positions. */
interface Locations {
  /** Line of each top-level key or table header. */
  root: Map<string, number>;
  blocks: { header: number; keys: Map<string, number> }[];
}

/** Finds the line of each top-level key and, per `[[services]]` block, of each key; `text` must be valid TOML. */
function locate(text: string): Locations {
  const root = new Map<string, number>();
  const blocks: Locations["blocks"] = [];
  const setOnce = (m: Map<string, number>, k: string | undefined, n: number): void => {
    if (k !== undefined && !m.has(k)) m.set(k, n);
  };
  let keys = root; // where key assignments of the current table go
  let depth = 0; // nesting of [] and {} inside a value
  let quote = ""; // delimiter of an open multi-line string
  text.split("\n").forEach((line, i) => {
    const n = i + 1;
    let pos = 0;
    if (quote === "" && depth === 0) {
      pos = skipBlank(line, 0);
      if (line[pos] === "[") {
        const aot = line[pos + 1] === "[";
        const path = keyPath(line, pos + (aot ? 2 : 1)).keys;
        if (aot && path.length === 1 && path[0] === "services") {
          blocks.push({ header: n, keys: new Map() });
          keys = blocks.at(-1)!.keys;
        } else {
          const last = blocks.at(-1);
          if (path[0] === "services" && last) setOnce(last.keys, path[1], n);
          else setOnce(root, path[0], n);
          keys = new Map(); // keys of a sub-table are not located
        }
        return;
      }
      if (pos < line.length && line[pos] !== "#" && line[pos] !== "\r") {
        const path = keyPath(line, pos);
        setOnce(keys, path.keys[0], n);
        pos = line.indexOf("=", path.end) + 1;
      }
    }
    for (let j = pos; j < line.length; j++) {
      const c = line[j]!;
      if (quote !== "") {
        if (c === "\\" && quote === '"""') j++;
        else if (line.startsWith(quote, j)) {
          // A closing delimiter may follow up to two quotes of the content: take the whole run.
          let k = j;
          while (line[k] === c && k - j < 5) k++;
          j = k - 1;
          quote = "";
        }
      } else if (c === "#") {
        break;
      } else if (c === '"' || c === "'") {
        if (line.startsWith(c.repeat(3), j)) {
          quote = c.repeat(3);
          j += 2;
        } else {
          j = skipString(line, j);
        }
      } else if (c === "[" || c === "{") {
        depth++;
      } else if (c === "]" || c === "}") {
        depth--;
      }
    }
  });
  return { root, blocks };
}

/** Parses a dotted key starting at `pos`; returns its parts and the position after it. */
function keyPath(line: string, pos: number): { keys: string[]; end: number } {
  const keys: string[] = [];
  for (;;) {
    pos = skipBlank(line, pos);
    const c = line[pos];
    if (c === '"' || c === "'") {
      const end = skipString(line, pos);
      const raw = line.slice(pos, end + 1);
      keys.push(c === "'" ? raw.slice(1, -1) : decodeBasic(raw));
      pos = end + 1;
    } else {
      const bare = /^[A-Za-z0-9_-]*/.exec(line.slice(pos))![0];
      keys.push(bare);
      pos += bare.length;
    }
    pos = skipBlank(line, pos);
    if (line[pos] !== ".") return { keys, end: pos };
    pos++;
  }
}

/** Returns the index of the quote closing the one-line string opened at `pos`. */
function skipString(line: string, pos: number): number {
  const c = line[pos];
  let j = pos + 1;
  while (j < line.length && line[j] !== c) j += c === '"' && line[j] === "\\" ? 2 : 1;
  return j;
}

function skipBlank(line: string, pos: number): number {
  while (line[pos] === " " || line[pos] === "\t") pos++;
  return pos;
}

// TOML basic strings share JSON's common escapes; the rare others only cost a located line.
function decodeBasic(raw: string): string {
  try {
    return JSON.parse(raw) as string;
  } catch {
    return raw.slice(1, -1);
  }
}

function isTable(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

function typeName(v: unknown): string {
  if (typeof v === "string") return "a string";
  if (typeof v === "number" || typeof v === "bigint") return "a number";
  if (typeof v === "boolean") return "a boolean";
  if (v instanceof Date) return "a date-time";
  if (Array.isArray(v)) return "an array";
  return "a table";
}

function q(s: string): string {
  return JSON.stringify(s);
}

function lowerFirst(s: string): string {
  return s.charAt(0).toLowerCase() + s.slice(1);
}
