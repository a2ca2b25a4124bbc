/** One `[[services]]` table of the pgod config file: its keys, and a checker per group of them. */
import { CONTROL, branchProblem, hostPort, parseMount, parseRegistry, parseReload, q, relativePathProblem } from "./config_values.ts";
import type { ServiceConfig } from "./config.ts";
import { parseDuration } from "./duration.ts";

/** Every key a `[[services]]` table accepts. */
export const SERVICE_KEYS: readonly string[] = [
  "name", "user", "repository", "branch", "compose", "registries",
  "env", "urls", "networks", "import", "reload", "mount", "health_timeout", "webhook_secret",
  "verify", "trust_root", "checkout_binds", "logging_drivers", "age_identities", "engine",
];

/** Default of `health_timeout`: how long a deploy may take to become running and healthy. */
export const DEFAULT_HEALTH_TIMEOUT_MS = 120_000;

const NAME = /^[a-z0-9][a-z0-9_-]*$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const LOG_DRIVER = /^[a-z0-9][a-z0-9_.\/:-]*$/;

/** Reports a problem at a key of the table (undefined: the table itself). */
export type Report = (key: string | undefined, message: string) => void;

/** One service table being checked: typed reads of its keys that report what is wrong. */
interface Entry {
  readonly table: Record<string, unknown>;
  readonly report: Report;
  /** Reports `Invalid value "v" for "key": why`; never for secrets, whose values are not quoted. */
  invalid(key: string, value: string, why: string): void;
  /** The string at key; undefined (reported) when it is not one. */
  str(key: string): string | undefined;
  /** The strings at key; non-strings are reported and left out. */
  strs(key: string): string[] | undefined;
}

function entryOf(table: Record<string, unknown>, report: Report): Entry {
  return {
    table,
    report,
    invalid: (key, value, why) => report(key, `Invalid value ${q(value)} for ${q(key)}: ${why}`),
    str(key) {
      const v = table[key];
      if (v === undefined || typeof v === "string") return v;
      report(key, `Invalid type for ${q(key)}: expected a string, got ${typeName(v)}`);
      return undefined;
    },
    strs(key) {
      const v = table[key];
      if (v === undefined) return undefined;
      if (!Array.isArray(v)) {
        report(key, `Invalid type for ${q(key)}: expected an array of strings, got ${typeName(v)}`);
        return undefined;
      }
      v.forEach((x: unknown, i) => {
        if (typeof x !== "string") report(key, `Invalid type for entry ${i + 1} of ${q(key)}: expected a string, got ${typeName(x)}`);
      });
      return v.filter((x: unknown): x is string => typeof x === "string");
    },
  };
}

/** A checker for one group of keys: reports problems and sets the valid values on svc. */
type Checker = (e: Entry, svc: ServiceConfig) => void;

/** The checkers after the identity keys, in the order their problems are reported. */
const CHECKERS: readonly Checker[] = [
  checkHealthTimeout, checkWebhookSecret, checkVerify, checkPaths, checkReload, checkMount,
  checkRegistries, checkEnv, checkUrls, checkEngine, checkAgeIdentities, checkNetworks,
  checkCheckoutBinds, checkLoggingDrivers,
];

/** Validates one service table, reporting each problem; returns the service with defaults applied. */
export function checkService(
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
  const e = entryOf(entry, report);
  const svc = checkIdentity(e, lineOf());
  for (const check of CHECKERS) check(e, svc);
  return svc;
}

/** name, user, repository and branch; returns the service with defaults for everything else. */
function checkIdentity(e: Entry, line: number): ServiceConfig {
  const name = e.str("name");
  if (name !== undefined && !(NAME.test(name) && name.length <= 63)) {
    e.invalid("name", name, `expected a compose project name: lower-case letters, digits, "_" and "-", starting with a letter or digit, at most 63 characters`);
  }
  const user = e.str("user");
  if (user !== undefined && (user === "" || /[\s:]/.test(user) || CONTROL.test(user))) {
    e.invalid("user", user, `expected a user name without whitespace or ":"`);
  }
  // Never quote the repository: an HTTPS URL may carry a token.
  const repository = e.str("repository");
  if (repository === "") e.invalid("repository", "", "expected a git URL");
  else if (repository !== undefined && (repository.startsWith("-") || /\s/.test(repository) || CONTROL.test(repository))) {
    e.report("repository", `Invalid value for "repository": a git URL cannot start with "-" or contain whitespace or control characters`);
  }
  const branch = e.str("branch");
  const branchWhy = branch === undefined ? undefined : branchProblem(branch);
  if (branch !== undefined && branchWhy !== undefined) e.invalid("branch", branch, branchWhy);
  return {
    name: name ?? "",
    user: user ?? "",
    repository: repository ?? "",
    branch: branch ?? "main",
    registries: [],
    env: Object.create(null) as Record<string, string>, // no prototype: "__proto__" is a valid variable name
    envKeys: [],
    urls: [],
    healthTimeoutMs: DEFAULT_HEALTH_TIMEOUT_MS,
    line,
  };
}

function checkHealthTimeout(e: Entry, svc: ServiceConfig): void {
  const health = e.str("health_timeout");
  if (health === undefined) return;
  let ms = NaN;
  try {
    ms = parseDuration(health);
  } catch {
    // reported below
  }
  if (!(ms >= 1000 && ms <= 3_600_000)) e.invalid("health_timeout", health, `expected a Go duration from 1s to 1h, such as "90s"`);
  else svc.healthTimeoutMs = ms;
}

function checkWebhookSecret(e: Entry, svc: ServiceConfig): void {
  // A secret: never quoted in messages.
  const secret = e.str("webhook_secret");
  if (secret === undefined) return;
  if (secret.length < 16 || CONTROL.test(secret)) e.report("webhook_secret", `Invalid value for "webhook_secret": expected at least 16 characters without control characters`);
  else svc.webhookSecret = secret;
}

/** verify and trust_root, which come together. */
function checkVerify(e: Entry, svc: ServiceConfig): void {
  const verify = e.str("verify");
  if (verify !== undefined && verify !== "commits") e.invalid("verify", verify, `expected "commits" (deploy only signed commits), or no "verify" key`);
  const root = e.str("trust_root");
  if (root !== undefined && !/^[0-9a-f]{40}$/.test(root)) e.invalid("trust_root", root, "expected a full commit id: 40 lower-case hex digits");
  if (verify === "commits" && root === undefined) e.report("verify", `Missing key "trust_root": "verify" needs the first commit to trust`);
  if (root !== undefined && verify === undefined) e.report("trust_root", `Key "trust_root" needs verify = "commits"`);
  if (verify === "commits" && root !== undefined && /^[0-9a-f]{40}$/.test(root)) {
    svc.verify = verify;
    svc.trustRoot = root;
  }
}

/** compose and import: paths inside the checkout. */
function checkPaths(e: Entry, svc: ServiceConfig): void {
  for (const key of ["compose", "import"] as const) {
    const p = e.str(key);
    if (p === undefined) continue;
    const why = relativePathProblem(p);
    if (why !== undefined) e.invalid(key, p, why);
    else svc[key] = p;
  }
}

function checkReload(e: Entry, svc: ServiceConfig): void {
  const reload = e.str("reload");
  if (reload === undefined) return;
  const r = parseReload(reload);
  if (typeof r === "string") e.invalid("reload", reload, r);
  else svc.reload = r;
}

function checkMount(e: Entry, svc: ServiceConfig): void {
  const mount = e.str("mount");
  if (mount === undefined) return;
  const m = parseMount(mount);
  if (typeof m === "string") e.invalid("mount", mount, m);
  else svc.mount = m;
}

// Registry entries and env values hold secrets: name the entry by number, never by value.
function checkRegistries(e: Entry, svc: ServiceConfig): void {
  e.strs("registries")?.forEach((s, i) => {
    const r = parseRegistry(s, svc.user);
    if (typeof r === "string") e.report("registries", `Invalid entry ${i + 1} for "registries": ${r}`);
    else svc.registries.push(r);
  });
}

function checkEnv(e: Entry, svc: ServiceConfig): void {
  const seen = new Map<string, number>();
  e.strs("env")?.forEach((s, i) => {
    const eq = s.indexOf("=");
    const key = s.slice(0, eq);
    const bad = (why: string): void => e.report("env", `Invalid entry ${i + 1} for "env": ${why}`);
    if (eq < 0) return bad(`expected "KEY=VALUE"`);
    if (!ENV_NAME.test(key)) return bad("the variable name must match [A-Za-z_][A-Za-z0-9_]*");
    if (s.includes("\0")) return bad("the value cannot contain a NUL character");
    const first = seen.get(key);
    if (first !== undefined) return e.report("env", `Duplicate variable ${q(key)} in "env": entries ${first} and ${i + 1}`);
    seen.set(key, i + 1);
    svc.env[key] = s.slice(eq + 1);
    svc.envKeys.push(key);
  });
}

function checkUrls(e: Entry, svc: ServiceConfig): void {
  const urls = e.table["urls"];
  if (urls === undefined) return;
  if (!isTable(urls)) {
    e.report("urls", `Invalid type for "urls": expected a table of strings, got ${typeName(urls)}`);
    return;
  }
  for (const [site, target] of Object.entries(urls)) {
    if (site === "" || /[\s{}"`#]/.test(site) || CONTROL.test(site)) {
      e.report("urls", `Invalid site address ${q(site)} in "urls": expected no whitespace, quotes, "{", "}" or "#"`);
    } else if (typeof target !== "string") {
      e.report("urls", `Invalid type for ${q(site)} in "urls": expected a string, got ${typeName(target)}`);
    } else {
      const hp = hostPort(target);
      const why = typeof hp === "string" ? hp : hp.port === undefined ? "missing port" : undefined;
      if (why !== undefined) e.report("urls", `Invalid value ${q(target)} for ${q(site)} in "urls": expected "host:port": ${why}`);
      else svc.urls.push({ site, target });
    }
  }
}

function checkEngine(e: Entry, svc: ServiceConfig): void {
  const engine = e.str("engine");
  if (engine !== undefined && engine !== "compose" && engine !== "swarm") {
    e.invalid("engine", engine, 'expected "compose" or "swarm"');
  } else if (engine === "swarm") svc.engine = "swarm";
}

function checkAgeIdentities(e: Entry, svc: ServiceConfig): void {
  const identities = e.strs("age_identities");
  identities?.forEach((f, i) => {
    if (!f.startsWith("/") || CONTROL.test(f)) e.report("age_identities", `Invalid entry ${i + 1} for "age_identities": expected an absolute path to an age identity file`);
  });
  if (identities !== undefined) svc.ageIdentities = identities;
}

function checkNetworks(e: Entry, svc: ServiceConfig): void {
  const networks = e.strs("networks");
  networks?.forEach((n, i) => {
    if (n === "" || /\s/.test(n) || CONTROL.test(n)) {
      e.report("networks", `Invalid entry ${i + 1} for "networks": expected a network name without whitespace`);
    }
  });
  if (networks !== undefined) svc.networks = networks;
}

function checkCheckoutBinds(e: Entry, svc: ServiceConfig): void {
  const binds = e.str("checkout_binds");
  if (binds === undefined) return;
  if (binds !== "ro" && binds !== "rw") e.invalid("checkout_binds", binds, `expected "ro" or "rw"`);
  else svc.checkoutBinds = binds;
}

function checkLoggingDrivers(e: Entry, svc: ServiceConfig): void {
  const drivers = e.strs("logging_drivers");
  drivers?.forEach((d, i) => {
    if (!LOG_DRIVER.test(d)) e.report("logging_drivers", `Invalid entry ${i + 1} for "logging_drivers": expected a Docker logging driver name such as "journald"`);
  });
  if (drivers !== undefined) svc.loggingDrivers = drivers;
}

/** A TOML table (not an array or a date-time). */
export function isTable(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

/** The TOML type of a value, for messages: "a string", "an array"... */
export function typeName(v: unknown): string {
  if (typeof v === "string") return "a string";
  if (typeof v === "number" || typeof v === "bigint") return "a number";
  if (typeof v === "boolean") return "a boolean";
  if (v instanceof Date) return "a date-time";
  if (Array.isArray(v)) return "an array";
  return "a table";
}
