/**
 * Fuzzing of the parsers that take outside input: the config file, SSH requests, the router
 * behind them and the compose policy. Thousands of generated inputs each, from a seeded PRNG (the
 * seed is printed; `PGO_FUZZ_SEED=N` replays a run). Every input must give a result or the typed
 * error of its parser, within a time budget; anything else is a finding, printed with the input.
 */
import { describe, expect, test } from "bun:test";
import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { COMMANDS, dispatch } from "../../src/commands.ts";
import type { RouterDeps, ServiceHandle } from "../../src/commands.ts";
import type { Compose } from "../../src/compose.ts";
import { parseConfig } from "../../src/config.ts";
import { ConfigError, EX, PolicyError } from "../../src/errors.ts";
import type { RunResult } from "../../src/exec.ts";
import { keyAllows, parseAuthorizedKeys } from "../../src/keys.ts";
import { makeLogger } from "../../src/log.ts";
import { evaluatePolicy, RULES } from "../../src/policy.ts";
import { screenComposeTree, screenYaml } from "../../src/yaml_screen.ts";
import type { ServiceStatus } from "../../src/reconcile.ts";
import { quoteShellWord, splitShellWords } from "../../src/shell_words.ts";
import type { ClientKey, SessionIO } from "../../src/ssh_session.ts";
import { parseRequest } from "../../src/target.ts";
import { fuzzSeed, Rng } from "./fuzz.ts";

const SEED = fuzzSeed();
console.log(`fuzz seed: ${SEED} (replay with PGO_FUZZ_SEED=${SEED})`);

/** A generous bound for one ordinary input on a busy 2-core machine; a hang goes far past it. */
const BUDGET_MS = 5000;
/** For the few multi-megabyte inputs. */
const BIG_BUDGET_MS = 20_000;

/** What went wrong with one input, kept short enough to print. */
interface Finding {
  input: string;
  problem: string;
}

/** Shows an input in a failure message: escaped, and cut in the middle when long. */
function show(s: string): string {
  const j = JSON.stringify(s);
  return j.length <= 400 ? j : `${j.slice(0, 200)}...(${s.length} chars)...${j.slice(-150)}`;
}

/** Runs `check` on every input, timing each; returns the findings (empty when all is well). */
async function fuzz(
  label: string,
  inputs: Iterable<{ text: string; budgetMs?: number }>,
  check: (text: string) => Promise<string | null> | string | null,
): Promise<{ findings: Finding[]; count: number; maxMs: number }> {
  const findings: Finding[] = [];
  let count = 0;
  let maxMs = 0;
  for (const { text, budgetMs } of inputs) {
    count++;
    const started = performance.now();
    let problem: string | null;
    try {
      problem = await check(text);
    } catch (e) {
      problem = `threw ${e instanceof Error ? `${e.constructor.name}: ${e.message.slice(0, 300)}` : String(e)}`;
    }
    const ms = performance.now() - started;
    maxMs = Math.max(maxMs, ms);
    if (problem === null && ms > (budgetMs ?? BUDGET_MS)) problem = `took ${Math.round(ms)} ms (budget ${budgetMs ?? BUDGET_MS} ms)`;
    if (problem !== null && findings.length < 20) findings.push({ input: show(text), problem });
  }
  console.log(`${label}: ${count} inputs, ${findings.length} findings, slowest ${Math.round(maxMs)} ms`);
  return { findings, count, maxMs };
}

// ---------------------------------------------------------------------------------------------
// The config file

const VALID_CONFIG = `# pgod config
[[services]]
name = "caddy"
user = "root"
repository = "https://github.com/example/caddy"
import = "caddy/Caddyfile-import"
reload = "localhost:caddy//exec caddy reload --config '/etc/caddy/Caddy file' --adapter caddyfile"

[[ services ]] # the website
"name" = "pgo"
branch = "release/v1"
user = 'deploy'
repository = "https://oauth2:hunter2@git.example.org/pgo.git"
compose = "deploy/compose.yaml"
registries = [
  "bot:s3cr@t@registry.example.org",
  "tok:en@[::1]:5000",
]
env = [ "MYENV=bla", "OTHER=a=b", "EMPTY=" ]
urls = { "www.example.org" = "pgo:8080", "http://b.example" = "[2001:db8::1]:80" }
networks = [ "reverseproxy" ]
mount = "nfs://nfs.example.org:2049/share/pgo"
health_timeout = "1m30s"
webhook_secret = "0123456789abcdef-secret"
`;

const TOML_PIECES = [
  "[[services]]", "[services]", "[", "]", "[[", "]]", "{", "}", "=", ",", ".", "\"", "'", '"""', "'''", "\\", "\\u0000",
  "\\U0010FFFF", "\\x", "#", "\n", "\r\n", "\r", " ", "\t", "name", "user", "repository", "env", "urls", "registries",
  "branch", "compose", "import", "reload", "mount", "networks", "health_timeout", "webhook_secret", "services",
  "\"root\"", "\"x\"", "1", "-0", "1e999", "0x7fffffffffffffff", "nan", "inf", "true", "false", "1979-05-27T07:32:00Z",
  "07:32:00", "1979-05-27", "\u0000", "\ufeff", "\u2028", "é", "\ud83d\ude00", "\ud800", "__proto__", "constructor",
  "a.b.c", "\"a.b\"", "= [", "= {", "[]", "{}", "\"K=V\"", "\"nfs://h/p\"", "\"h:1\"", "\"x//exec y\"",
];

function* configInputs(rng: Rng, n: number): Generator<{ text: string; budgetMs?: number }> {
  for (let i = 0; i < n; i++) {
    switch (i % 6) {
      case 0: // random TOML-ish text from syntax pieces
        yield { text: rng.from(TOML_PIECES, 1 + rng.int(80)) };
        break;
      case 1: // a valid config with a few edits
      case 2:
        yield { text: rng.mutate(VALID_CONFIG, 1 + rng.int(6), TOML_PIECES) };
        break;
      case 3: // a valid config truncated
        yield { text: VALID_CONFIG.slice(0, rng.int(VALID_CONFIG.length)) };
        break;
      case 4: { // deep nesting of inline tables and arrays, closed or not
        const depth = rng.pick([10, 100, 500, 1000, 5000, 20000]);
        const open = rng.pick(["[", "{a=", "{ \"a\" = [", "[{b=", "a."]);
        const close = open === "[" ? "]" : open === "{a=" ? "}" : open === "a." ? "" : open.startsWith("{") ? "]}" : "}]";
        const body = open === "a." ? `${open.repeat(depth)}b = 1` : `x = ${open.repeat(depth)}1${rng.chance(0.7) ? close.repeat(depth) : ""}`;
        yield { text: rng.chance(0.5) ? body : `[[services]]\nname = "n"\nuser = "root"\nrepository = "r"\nenv = ${body.slice(4)}` };
        break;
      }
      default: { // unicode, NUL and control characters in keys and values; random byte soup
        if (rng.chance(0.3)) {
          yield { text: new TextDecoder().decode(rng.bytes(1 + rng.int(300))) };
        } else {
          let s = "";
          for (let k = rng.int(40); k > 0; k--) s += rng.char();
          const key = rng.pick(["name", "user", "repository", "branch", "env", "urls", "reload", "mount", s]);
          const value = rng.pick([`"${s}"`, `'${s}'`, `"""${s}"""`, `["${s}"]`, `{ "${s}" = "${s}" }`, s]);
          yield { text: `[[services]]\nname = "a"\nuser = "root"\nrepository = "r"\n${key} = ${value}\n` };
        }
      }
    }
  }
  // A few huge inputs.
  yield { text: `[[services]]\nname = "${"x".repeat(5_000_000)}"\nuser = "root"\nrepository = "r"\n`, budgetMs: BIG_BUDGET_MS };
  yield { text: `[[services]]\nname = "a"\nuser = "root"\nrepository = "r"\nenv = ["K=${"v".repeat(5_000_000)}"]\n`, budgetMs: BIG_BUDGET_MS };
  yield { text: `[[services]]\nname = "a"\nuser = "root"\nrepository = "r"\n${"# comment\n".repeat(200_000)}`, budgetMs: BIG_BUDGET_MS };
  yield { text: "[[services]]\n".repeat(50_000), budgetMs: BIG_BUDGET_MS };
  yield { text: `x = "${"\\u0000".repeat(200_000)}`, budgetMs: BIG_BUDGET_MS };
  yield { text: "\u0000".repeat(1_000_000), budgetMs: BIG_BUDGET_MS };
}

/** Null when `parseConfig` either accepts `text` or throws a well-formed ConfigError. */
function checkConfig(text: string): string | null {
  let config;
  try {
    config = parseConfig(text, "/etc/pgo/pgo.toml");
  } catch (e) {
    if (!(e instanceof ConfigError)) return `threw ${e instanceof Error ? e.constructor.name : typeof e} instead of ConfigError: ${String(e).slice(0, 300)}`;
    if (e.problems.length === 0) return "ConfigError without problems";
    const lines = text.split("\n").length;
    for (const p of e.problems) {
      if (!Number.isInteger(p.line) || p.line < 0 || p.line > lines + 1) return `problem with line ${p.line} (the text has ${lines} lines): ${p.message}`;
      if (typeof p.message !== "string" || p.message.trim() === "") return `problem without a message at line ${p.line}`;
      if (typeof p.key !== "string") return `problem with key ${String(p.key)}`;
      if (p.file !== "/etc/pgo/pgo.toml") return `problem names file ${p.file}`;
    }
    return null;
  }
  for (const s of config.services) {
    if (typeof s.name !== "string" || !/^[a-z0-9][a-z0-9_-]*$/.test(s.name)) return `accepted a service with name ${JSON.stringify(s.name)}`;
    if (s.user === "" || s.repository === "") return `accepted service "${s.name}" without user or repository`;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// SSH requests

const SHELL_PIECES = [
  "'", '"', "\\", "\\\\", "\\'", '\\"', "\\\n", " ", "  ", "\t", "\n", "\r", "//", "/", "web", "web//ps", "svc//exec",
  "$HOME", "$(id)", "`id`", ";", "&&", "|", ">", "<", "*", "?", "~", "#", "=", "-f", "--tail", "5", "\u0000", "\u001b[2J",
  "\u007f", "é", "\ufffd", "\ud83d\ude00", "\ud800", "''", '""', "' '", '" "', "'\"'", "\"'\"",
];

function* requestInputs(rng: Rng, n: number): Generator<{ text: string }> {
  for (let i = 0; i < n; i++) {
    switch (i % 4) {
      case 0:
        yield { text: rng.from(SHELL_PIECES, rng.int(30)) };
        break;
      case 1: { // non-UTF-8 bytes as ssh2 would hand them over (decoded as UTF-8)
        const b = rng.bytes(rng.int(200));
        yield { text: new TextDecoder().decode(b) };
        break;
      }
      case 2: // latin-1 decoding of random bytes: every byte value as a character
        yield { text: Buffer.from(rng.bytes(rng.int(200))).toString("latin1") };
        break;
      default: {
        let s = `${rng.pick(["web", "x", "", "a/b", "web//"])}//${rng.pick([...COMMANDS, "", "x", "ps;"])}`;
        for (let k = rng.int(6); k > 0; k--) s += rng.pick([" ", "\t", "\n"]) + rng.from(SHELL_PIECES, rng.int(6));
        yield { text: s };
      }
    }
  }
  yield { text: "'".repeat(100_000) };
  yield { text: "\\".repeat(100_001) };
  yield { text: `web//ps ${"a ".repeat(100_000)}` };
  yield { text: '"'.repeat(100_000) + "x" };
}

/** Null when `splitShellWords` gives words whose re-quoted form splits back to the same words, or throws a clear Error. */
function checkSplit(text: string): string | null {
  let words: string[];
  try {
    words = splitShellWords(text);
  } catch (e) {
    if (!(e instanceof Error) || e.message.trim() === "") return `threw something without a message: ${String(e)}`;
    return null;
  }
  const again = splitShellWords(words.map(quoteShellWord).join(" "));
  if (JSON.stringify(again) !== JSON.stringify(words)) return `re-quoted words do not round-trip: ${JSON.stringify(words)} -> ${JSON.stringify(again)}`;
  return null;
}

/** Null when `parseRequest` gives a request that survives re-quoting, or throws a clear Error. */
function checkRequest(text: string): string | null {
  let req;
  try {
    req = parseRequest(text);
  } catch (e) {
    if (!(e instanceof Error) || e.message.trim() === "") return `threw something without a message: ${String(e)}`;
    return null;
  }
  if (req.service === "" || req.command === "" || req.service.includes("//") || req.command.includes("//")) {
    return `accepted an empty or split service/command: ${JSON.stringify(req)}`;
  }
  const requoted = [`${req.service}//${req.command}`, ...req.args].map(quoteShellWord).join(" ");
  const again = parseRequest(requoted);
  if (JSON.stringify(again) !== JSON.stringify(req)) return `re-quoted request does not round-trip: ${JSON.stringify(req)} -> ${JSON.stringify(again)}`;
  return null;
}

// ---------------------------------------------------------------------------------------------
// The router

const KEY_A: ClientKey = { algo: "ssh-ed25519", blob: Buffer.from("key-a"), fingerprint: "SHA256:a" };
const KEY_B: ClientKey = { algo: "ssh-ed25519", blob: Buffer.from("key-b"), fingerprint: "SHA256:b" };

/** A service handle whose operations record calls and, when `rng` says so, fail or stall briefly. */
function fakeHandle(rng: Rng, calls: string[], cloned: boolean): ServiceHandle {
  const status = (): ServiceStatus => ({
    name: "web", commit: cloned ? "abc" : null, deployedAt: null, lastResult: null, lastError: null, stopFile: false,
    nextPollAt: null, lastPollAt: null, hold: null, pinned: null, good: null, bad: null,
  });
  const maybeFail = async (what: string): Promise<void> => {
    calls.push(what);
    if (rng.chance(0.1)) throw new Error(rng.pick(["Cannot do it", "", "\u0000", "x".repeat(5000)]));
    if (rng.chance(0.1)) throw rng.pick<unknown>([null, undefined, 42, "string thrown", { weird: true }]);
  };
  const exitCode = (): number => rng.pick([0, 0, 0, 1, 2, 125, 126, 127, 128, 137, 255]);
  const result = (): RunResult => ({ exitCode: exitCode(), signal: null, stdout: "", stderr: "", durationMs: 1, timedOut: false });
  const compose: Compose = {
    async run(args, io) {
      await maybeFail(`run ${args[0]}`);
      await io?.onStdout?.(new TextEncoder().encode(`ran ${args.join(" ")}\n`));
      await io?.onStderr?.(rng.bytes(rng.int(20)));
      return result();
    },
    async must(args) {
      await maybeFail(`must ${args[0]}`);
      return result();
    },
    async services() {
      return ["web"];
    },
    withRegistries: (_r, fn) => fn(),
  };
  return {
    status,
    exclusive: (fn) => fn(),
    async composeFor() {
      await maybeFail("composeFor");
      return compose;
    },
    async restoreNow() {
      await maybeFail("restore");
    },
    async deployNow() {
      await maybeFail("deploy");
      return exitCode();
    },
    async pullNow() {
      await maybeFail("pull");
      return exitCode();
    },
    async setHold(h) {
      await maybeFail(`hold ${h}`);
    },
    async check() {
      await maybeFail("check");
      const refusal = rng.chance(0.5) ? null : "a reason";
      return { commit: "abc", branch: "main", running: "abc", refusal, findings: [] };
    },
    async rollbackTo() {
      await maybeFail("rollback");
      return exitCode();
    },
    async unpin() {
      await maybeFail("unpin");
    },
    async syncNow() {
      await maybeFail("sync");
      return status();
    },
    stopFileNow: async () => null,
    async recipient() {
      await maybeFail("recipient");
      return "age1fuzz";
    },
    historyFile: "/nonexistent/history",
  };
}

function* routerInputs(rng: Rng, n: number): Generator<{ text: string }> {
  const args = ["-f", "--follow", "--tail", "5", "-n", "--tail=3", "web", "db", "-v", "--volumes", "-t", "10", "--privileged",
    "-u", "root", "sh", "-c", "exit 3", "abc123", "zzzz", "20", "0", "99999", "--format", "json", "''", "'a b'", "\\", "$(x)"];
  for (let i = 0; i < n; i++) {
    if (i % 5 === 0) {
      yield { text: new TextDecoder().decode(rng.bytes(rng.int(120))) };
      continue;
    }
    const service = rng.pick(["web", "web", "web", "other", "nosuch", "", "WEB", "web ", "we'b'"]);
    const command = rng.pick([...COMMANDS, ...COMMANDS, "frobnicate", "", "PING", "ps;"]);
    let s = `${service}//${command}`;
    for (let k = rng.chance(0.5) ? 0 : rng.int(5); k > 0; k--) s += ` ${rng.chance(0.8) ? rng.pick(args) : rng.from(SHELL_PIECES, rng.int(4))}`;
    yield { text: s };
  }
}

// ---------------------------------------------------------------------------------------------
// The compose policy

const VALID_COMPOSE = `name: app
x-common: &common
  image: pgo-busybox:1
  pull_policy: never
  environment:
    A: "1"
services:
  web:
    <<: *common
    command: ["/bin/httpd", "-f", "-p", "8080"]
    volumes:
      - ./data:/data
      - type: bind
        source: /var/run/docker.sock
        target: /s
    networks: [front]
    security_opt: ["seccomp=unconfined"]
  db:
    <<: *common
    privileged: true
    network_mode: host
networks:
  front: {}
volumes:
  v:
    driver_opts: { type: none, o: bind, device: /etc }
`;

const YAML_PIECES = [
  ":", ": ", "- ", "-", "&a ", "*a", "&b ", "*b", "<<: *a", "[", "]", "{", "}", ",", "\n", "\n  ", "\n    ", "  ", "\t",
  "'", '"', "|", ">", "|-", "? ", "!", "!!str ", "!!binary ", "!!map", "!!set", "!!omap", "!custom ", "%YAML 1.2\n", "%TAG ! tag:x,2000:\n",
  "---\n", "...\n", "#", "~", "null", "true", "0x1F", "1e9", ".inf", "services", "web", "image", "volumes", "include",
  "extends", "file", "privileged", "network_mode", "host", "\u0000", "\ufeff", "é", "\ud83d\ude00", "\\", "\\u0000", "@", "`",
];

function aliasBomb(levels: number, width: number): string {
  let y = "a0: &a0 [lol]\n";
  for (let l = 1; l <= levels; l++) y += `a${l}: &a${l} [${Array(width).fill(`*a${l - 1}`).join(", ")}]\n`;
  return y;
}

function* yamlInputs(rng: Rng, n: number): Generator<{ text: string; budgetMs?: number }> {
  for (let i = 0; i < n; i++) {
    switch (i % 6) {
      case 0:
        yield { text: rng.from(YAML_PIECES, 1 + rng.int(60)) };
        break;
      case 1:
      case 2:
        yield { text: rng.mutate(VALID_COMPOSE, 1 + rng.int(6), YAML_PIECES) };
        break;
      case 3:
        yield { text: aliasBomb(1 + rng.int(12), 1 + rng.int(12)) };
        break;
      case 4: { // deep nesting in flow and block style
        const depth = rng.pick([10, 63, 64, 65, 100, 1000, 10_000, 100_000]);
        const style = rng.int(4);
        const text = style === 0 ? `${"[".repeat(depth)}${rng.chance(0.5) ? "]".repeat(depth) : ""}`
          : style === 1 ? `${"{a: ".repeat(depth)}1${"}".repeat(depth)}`
          : style === 2 ? Array.from({ length: Math.min(depth, 3000) }, (_, d) => `${" ".repeat(d)}k${d}:`).join("\n")
          : Array.from({ length: Math.min(depth, 3000) }, (_, d) => `${"  ".repeat(d)}- `).join("\n");
        yield { text, budgetMs: depth >= 10_000 ? BIG_BUDGET_MS : BUDGET_MS };
        break;
      }
      default:
        yield { text: new TextDecoder().decode(rng.bytes(rng.int(400))) };
    }
  }
  yield { text: `services:\n  web:\n    image: "${"x".repeat(1024 * 1024)}"\n` };
  yield { text: `a: ${"x".repeat(50 * 1024 * 1024)}`, budgetMs: BIG_BUDGET_MS };
  yield { text: Array.from({ length: 30_000 }, (_, k) => `k${k}: v`).join("\n") + "\nk0: dup\n", budgetMs: BIG_BUDGET_MS };
  yield { text: `a: &a [${"x, ".repeat(100_000)}x]\nb: [${"*a, ".repeat(99)}*a]\n`, budgetMs: BIG_BUDGET_MS };
  yield { text: `a: &a {b: *a}\n` };
}

/** Null when screenYaml passes `text` or refuses it with a PolicyError. */
function checkYaml(text: string): string | null {
  try {
    screenYaml(text, "compose.yaml");
  } catch (e) {
    if (!(e instanceof PolicyError)) return `threw ${e instanceof Error ? e.constructor.name : typeof e} instead of PolicyError: ${String(e).slice(0, 300)}`;
    if (!e.message.startsWith(`Cannot use compose file "compose.yaml": `)) return `message without the file: ${e.message.slice(0, 200)}`;
  }
  return null;
}

const MODEL_KEYS = [
  "services", "volumes", "networks", "secrets", "configs", "privileged", "network_mode", "ipc", "pid", "userns_mode", "uts",
  "cgroup", "ports", "cap_add", "devices", "device_cgroup_rules", "security_opt", "volumes_from", "container_name", "type",
  "source", "target", "driver_opts", "device", "o", "file", "name", "external", "web", "db", "__proto__", "constructor",
  "toString", "hasOwnProperty", "build", "context", "dockerfile", "network", "logging", "driver", "env_file", "path", "aliases",
  "ulimits", "sysctls", "deploy", "resources", "limits", "reservations", "pids", "pids_limit", "oom_score_adj", "links",
  "extra_hosts", "x-ext", "read_only", "bind", "propagation", "ipam", "config", "tags", "image", "name", "default",
];
const MODEL_STRINGS = [
  "host", "none", "bridge", "container:x", "container:app-web-1", "service:db", "shareable", "private", "/", "/etc", "/etc/shadow",
  "./data", "../..", "~", "/var/run/docker.sock", "/run/docker.sock", "seccomp=unconfined", "seccomp:./p.json", "bind", "rbind",
  "volume", "tmpfs", "front", "app_front", "", " ", "\u0000", "HOST", "Container:X", "label=disable", "/proc/self/root",
  "app_x_data", "app-x-web-1", "syslog", "json-file", "size=1m", "net.core.somaxconn", "kernel.x", "host-gateway", "h:1.2.3.4",
  "/srv/pgo/app", "/srv/pgo/app/data", "no-new-privileges", "app-web",
];

function randomModel(rng: Rng, depth = 0): unknown {
  const r = rng.int(depth > 4 ? 6 : 9);
  switch (r) {
    case 0: return null;
    case 1: return rng.chance(0.5);
    case 2: return rng.pick([0, -1, 1.5, Number.MAX_SAFE_INTEGER, 1e308]);
    case 3:
    case 4:
    case 5: return rng.chance(0.8) ? rng.pick(MODEL_STRINGS) : new TextDecoder().decode(rng.bytes(rng.int(20)));
    case 6: return Array.from({ length: rng.int(5) }, () => randomModel(rng, depth + 1));
    default: {
      const o: Record<string, unknown> = {};
      for (let k = rng.int(6); k > 0; k--) {
        // Own properties named like Object.prototype members, as JSON.parse makes them.
        Object.defineProperty(o, rng.pick(MODEL_KEYS), { value: randomModel(rng, depth + 1), enumerable: true, writable: true, configurable: true });
      }
      return o;
    }
  }
}

/** A model with a `services` map of random service definitions, as JSON would give it. */
function randomCompose(rng: Rng): unknown {
  const services: Record<string, unknown> = {};
  for (let k = rng.int(4); k >= 0; k--) {
    const def: Record<string, unknown> = {};
    for (let j = rng.int(6); j > 0; j--) def[rng.pick(MODEL_KEYS)] = rng.chance(0.5) ? rng.pick(MODEL_STRINGS) : randomModel(rng, 2);
    services[rng.pick(["web", "db", "x", "__proto__", ""])] = def;
  }
  const model: Record<string, unknown> = { services };
  for (const top of ["volumes", "networks", "secrets", "configs"]) if (rng.chance(0.4)) model[top] = randomModel(rng, 1);
  return JSON.parse(JSON.stringify(model)) as unknown;
}

const RULE_NAMES = new Set(RULES.map((r) => r.rule));

/** Null when evaluatePolicy returns well-formed violations or throws a PolicyError. */
function checkModel(model: unknown, resolve?: (p: string) => string): string | null {
  let v;
  try {
    v = evaluatePolicy(model, {
      project: "app", repoDir: "/srv/pgo/app", dataDir: "/var/lib/pgo/app", networks: ["front"], ...(resolve ? { resolve } : {}),
      projects: ["app", "app_x", "app-x", "other"],
      existing: { volumes: new Map([["app_v", "other"], ["app_x_data", "app_x"]]), networks: new Map([["app_default", "app"], ["app_front", ""]]) },
    });
  } catch (e) {
    if (e instanceof PolicyError && e.message !== "") return null;
    return `threw ${e instanceof Error ? e.constructor.name : typeof e}: ${String(e).slice(0, 300)}`;
  }
  if (!Array.isArray(v)) return "did not return an array";
  for (const x of v) {
    if (typeof x.service !== "string" || typeof x.key !== "string" || !RULE_NAMES.has(x.rule) || x.reason === "") {
      return `malformed violation ${JSON.stringify(x)}`;
    }
    if (x.value !== undefined && typeof x.value !== "string") return `violation value is not a string: ${JSON.stringify(x)}`;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------

describe("fuzzing the parsers of outside input", () => {
  test("parseConfig() throws nothing but a ConfigError whose problems all have a line and a message, in bounded time", async () => {
    const rng = new Rng(SEED);
    const r = await fuzz("parseConfig", configInputs(rng, 4000), checkConfig);
    expect(r.findings).toEqual([]);
    expect(r.count).toBeGreaterThanOrEqual(4000);
  }, 180_000);

  test("splitShellWords() and parseRequest() give a clear Error or words whose re-quoted form round-trips", async () => {
    const rng = new Rng(SEED + 1);
    const inputs = [...requestInputs(rng, 5000)];
    const split = await fuzz("splitShellWords", inputs, checkSplit);
    const request = await fuzz("parseRequest", inputs, checkRequest);
    expect(split.findings).toEqual([]);
    expect(request.findings).toEqual([]);
    expect(request.count).toBeGreaterThanOrEqual(5000);
  }, 120_000);

  test("dispatch() always returns an exit status in 0..255 and never runs anything for a key of another service", async () => {
    const rng = new Rng(SEED + 2);
    const calls: string[] = [];
    const handle = fakeHandle(rng, calls, true);
    const notCloned = fakeHandle(rng, calls, false);
    const deps: RouterDeps = {
      services: new Map([["web", handle], ["other", notCloned]]),
      keysOf: async (name) => (name === "nosuch" ? [] : [{ algo: KEY_A.algo, blob: KEY_A.blob, comment: "" }]),
      hostname: "box",
      logger: makeLogger({ debug: true, timestamps: false, write: () => {} }),
      count: () => {},
    };
    const statuses = new Map<number, number>();
    const r = await fuzz("dispatch", routerInputs(rng, 4000), async (request) => {
      for (const key of [KEY_A, KEY_B]) {
        const ac = new AbortController();
        if (rng.chance(0.05)) ac.abort();
        const failing = rng.chance(0.1);
        const sink = { write: async (): Promise<void> => { if (failing) throw new Error("client gone"); } };
        const io: SessionIO = { stdout: sink, stderr: sink, signal: ac.signal };
        const before = calls.length;
        const status = await dispatch(key, request, io, deps);
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
        if (!Number.isInteger(status) || status < 0 || status > 255) return `status ${status} for key ${key.fingerprint}`;
        if (key === KEY_B) {
          if (calls.length !== before) return `a foreign key ran ${calls.slice(before).join(", ")}`;
          if (status !== EX.noperm && status !== EX.usage) return `a foreign key got status ${status}`;
        }
      }
      return null;
    });
    console.log(`dispatch statuses: ${JSON.stringify(Object.fromEntries([...statuses].sort((a, b) => a[0] - b[0])))}`);
    expect(r.findings).toEqual([]);
    // The generator reaches the commands themselves, not only the refusals.
    expect(calls.length).toBeGreaterThan(500);
    expect(statuses.get(0) ?? 0).toBeGreaterThan(100);
  }, 120_000);

  test("screenYaml() passes a file or refuses it with a PolicyError, in bounded time, for random and hostile YAML", async () => {
    const rng = new Rng(SEED + 3);
    const r = await fuzz("screenYaml", yamlInputs(rng, 3000), checkYaml);
    expect(r.findings).toEqual([]);
  }, 240_000);

  test("screenYaml() refuses a merge key whose source is not a map with a PolicyError, not a plain Error (found by this fuzzer)", () => {
    for (const text of ["x: &a [1]\nservices:\n  web:\n    <<: *a\n", "services:\n  web:\n    <<: 5\n", "<<: *a1e9#null"]) {
      expect(checkYaml(text)).toBeNull(); // a PolicyError naming the file, nothing else
      expect(() => screenYaml(text, "compose.yaml")).toThrow(
        `Cannot use compose file "compose.yaml": it is not valid YAML: Merge sources must be maps or map aliases`,
      );
    }
  });

  test("evaluatePolicy() returns well-formed violations or a PolicyError for random JSON models", async () => {
    const rng = new Rng(SEED + 4);
    const models: unknown[] = [];
    for (let i = 0; i < 3000; i++) models.push(i % 3 === 0 ? randomModel(rng) : randomCompose(rng));
    const texts = models.map((m) => ({ text: JSON.stringify(m) ?? "undefined" }));
    let i = 0;
    // Every third model resolves paths on the real file system (lstat only), the rest as written.
    const r = await fuzz("evaluatePolicy", texts, () => checkModel(models[i], i++ % 3 === 0 ? undefined : (p) => p));
    expect(r.findings).toEqual([]);
    // Known-bad models are still caught after all that.
    const v = evaluatePolicy({ services: { web: { privileged: true, network_mode: "host" } } }, { project: "app", repoDir: "/r", dataDir: "/d" });
    expect(v.map((x) => x.rule).sort()).toEqual(["network_host", "privileged"]);
  }, 120_000);

  test("screenComposeTree() refuses random trees of includes and symlinks with a PolicyError and never reads outside the checkout", async () => {
    const rng = new Rng(SEED + 5);
    const root = await mkdtemp(join(tmpdir(), "pgo-fuzz-tree-"));
    const outside = join(root, "outside");
    await mkdir(outside);
    // A file the tree must never read: screening it would fail on its aliases, which no file
    // inside uses that often.
    await writeFile(join(outside, "secret.yaml"), "a: &a [SECRET-OUTSIDE]\n" + Array.from({ length: 200 }, (_, k) => `b${k}: [*a, *a]\n`).join(""));
    const names = ["compose.yaml", "a.yaml", "sub/b.yaml", "sub/deep/c.yaml", "link.yaml", "sub/link2.yaml", ".env", "sub/.env"];
    const targets = ["../outside/secret.yaml", "../../outside/secret.yaml", "/etc/shadow", "/dev/zero", "compose.yaml", "a.yaml",
      "sub", "..", "link.yaml", "/proc/self/environ", "../outside"];
    try {
      const r = await fuzz("screenComposeTree", (function* () {
        for (let i = 0; i < 300; i++) yield { text: String(i) };
      })(), async (tag) => {
        const repo = join(root, `r${tag}`, "repo");
        for (const name of names) {
          const path = join(repo, name);
          await mkdir(dirname(path), { recursive: true });
          if (rng.chance(0.35)) await symlink(rng.pick(targets), path).catch(() => {});
          else {
            const refs = Array.from({ length: rng.int(3) }, () => rng.pick([...names, ...targets, "${X}/a.yaml", "http://h/x.yaml", "git@h:x"]));
            const body = rng.chance(0.5)
              ? `include:\n${refs.map((p) => `  - ${JSON.stringify(p)}`).join("\n")}\nservices:\n  web:\n    image: x\n`
              : rng.chance(0.5)
              ? `services:\n  web:\n    extends:\n      file: ${JSON.stringify(rng.pick(refs.length ? refs : names))}\n      service: web\n`
              : `include:\n  - path: a.yaml\n    env_file: ${JSON.stringify(rng.pick([...names, ...targets]))}\n    project_directory: ${JSON.stringify(rng.pick(["sub", "..", "sub/deep", "link.yaml", "."]))}\n` +
                `services:\n  web:\n    image: x\n    env_file: ${JSON.stringify(refs)}\n`;
            await writeFile(path, rng.chance(0.1) ? rng.mutate(body, 3, YAML_PIECES) : body);
          }
        }
        try {
          await screenComposeTree(repo, "compose.yaml");
        } catch (e) {
          if (!(e instanceof PolicyError)) return `threw ${e instanceof Error ? e.constructor.name : typeof e}: ${String(e).slice(0, 300)}`;
          // The file outside is the only one whose aliases reach a limit (a merge of a
          // non-map, "Merge sources must be maps or map aliases", is the file's own fault).
          if (e.message.includes("SECRET-OUTSIDE") || /YAML aliases (too often|expand)/.test(e.message)) return `read a file outside: ${e.message}`;
        }
        return null;
      });
      expect(r.findings).toEqual([]);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  }, 120_000);
});

// ---------------------------------------------------------------------------------------------
// authorized_keys lines with options

const ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
const OPTION_PIECES = [
  ",", "=", '"', '\\"', " ", "\t", "!", "*", "?", "/", ":", "from", "command", "expiry-time", "restrict", "no-pty",
  "cert-authority", "environment", "10.0.0.0/8", "::1", "127.0.0.1", "2001:db8::/129", "20301231", "Z", "\u0000", "é",
];

describe("fuzzing authorized_keys options", () => {
  test("parseAuthorizedKeys() never throws, keeps only lines with well-formed options, and keyAllows() answers a boolean", async () => {
    const rng = new Rng(SEED + 6);
    let kept = 0;
    const r = await fuzz("authorized_keys options", (function* () {
      for (let i = 0; i < 4000; i++) {
        const base = rng.pick([
          `from="127.0.0.1,!10.0.0.1",no-pty ${ED25519} a`,
          `command="sync",expiry-time="20301231Z" ${ED25519} b`,
          `restrict,environment="A=b c" ${ED25519}`,
        ]);
        yield { text: rng.chance(0.2) ? rng.from(OPTION_PIECES, rng.int(40)) + " " + ED25519 : rng.mutate(base, 1 + rng.int(5), OPTION_PIECES) };
      }
    })(), (text) => {
      const warnings: string[] = [];
      const keys = parseAuthorizedKeys(text, (m) => warnings.push(m));
      const lines = text.split("\n").length; // a mutation may add a line break
      if (keys.length > lines) return `${lines} line(s) gave ${keys.length} keys`;
      kept += keys.length;
      if (!warnings.every((w) => /^Skipping the key on line ([1-9]\d*): \S/.test(w) && Number(/line (\d+)/.exec(w)![1]) <= lines)) {
        return `a warning without its line: ${warnings.join(" | ")}`;
      }
      for (const k of keys) {
        for (const ip of ["127.0.0.1", "10.0.0.1", "::1", "", "::ffff:127.0.0.1"]) {
          if (typeof keyAllows(k, { ip, now: Date.now() }) !== "boolean") return "keyAllows() gave no boolean";
        }
        const o = k.options;
        if (o?.expiresAt !== undefined && !Number.isFinite(o.expiresAt)) return `an expiry that is not a time: ${o.expiresAt}`;
      }
      return null;
    });
    expect(r.findings).toEqual([]);
    console.log(`authorized_keys options: ${kept} of ${r.count} lines kept`);
    expect(kept).toBeGreaterThan(0); // the inputs were not all garbage
  });
});
