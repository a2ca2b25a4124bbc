import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig, parseConfig } from "../src/config.ts";
import { SERVICE_KEYS } from "../src/config_service.ts";
import { ConfigError, type ConfigProblem } from "../src/errors.ts";

const FILE = "/etc/pgo/pgo.toml";

/** The problems `parseConfig` reports for `text`, without the file name. */
function problems(text: string): Omit<ConfigProblem, "file">[] {
  try {
    parseConfig(text, FILE);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    for (const p of e.problems) expect(p.file).toBe(FILE);
    return e.problems.map(({ line, key, message }) => ({ line, key, message }));
  }
  throw new Error("parseConfig() accepted the config");
}

/** A valid service block with `extra` lines appended; the header is on line 1. */
function service(extra = "", name = "web"): string {
  return `[[services]]\nname = "${name}"\nuser = "deploy"\nrepository = "https://example.org/web.git"\n${extra}`;
}

const FULL = `# pgod config
[[services]]
name = "caddy"
user = "root"
repository = "https://github.com/miekg/pgo-caddy"
import = "caddy/Caddyfile-import"
reload = "localhost:caddy//exec caddy reload --config '/etc/caddy/Caddy file' --adapter caddyfile"

[[ services ]] # the website
"name" = "pgo"
branch = "release/v1"
user = 'miek'
repository = "https://oauth2:hunter2@gitlab.example.org/pgo.git"
compose = "deploy/compose.yaml"
registries = [
  "bot:s3cr@t@ghcr.io",   # a token may hold "@"
  "tok:en@[::1]:5000",
]
env = [ "MYENV=bla", "OTHER=a=b", "EMPTY=" ]
urls = { "slashdot.org" = "pgo:8080", "http://b.example" = "[2001:db8::1]:80", "a.example" = "10.0.0.1:1" }
networks = [ "reverseproxy" ]
mount = "nfs://nfs.example.org:2049/share/pgo"
health_timeout = "1m30s"
webhook_secret = "0123456789abcdef-secret"
verify = "commits"
trust_root = "0123456789abcdef0123456789abcdef01234567"
checkout_binds = "rw"
logging_drivers = [ "journald", "syslog" ]
age_identities = [ "/etc/pgo/age/pgo.txt" ]
engine = "swarm"
`;

describe("parseConfig()", () => {
  test("reads verify and trust_root, and rejects a misspelt verify, a short trust_root and one without the other", () => {
    const root = "0123456789abcdef0123456789abcdef01234567";
    const [s] = parseConfig(service(`verify = "commits"\ntrust_root = "${root}"\n`), FILE).services;
    expect(s!.verify).toBe("commits");
    expect(s!.trustRoot).toBe(root);
    expect(parseConfig(service(), FILE).services[0]!.verify).toBeUndefined();
    expect(problems(service(`verify = "commit"\ntrust_root = "${root}"\n`))).toEqual([
      { line: 5, key: "services[1].verify", message: `Invalid value "commit" for "verify": expected "commits" (deploy only signed commits), or no "verify" key` },
    ]);
    expect(problems(service(`verify = "commits"\ntrust_root = "${root.slice(0, 12)}"\n`))).toEqual([
      { line: 6, key: "services[1].trust_root", message: `Invalid value "${root.slice(0, 12)}" for "trust_root": expected a full commit id: 40 lower-case hex digits` },
    ]);
    expect(problems(service(`verify = "commits"\n`))).toEqual([
      { line: 5, key: "services[1].verify", message: `Missing key "trust_root": "verify" needs the first commit to trust` },
    ]);
    expect(problems(service(`trust_root = "${root}"\n`))).toEqual([
      { line: 5, key: "services[1].trust_root", message: `Key "trust_root" needs verify = "commits"` },
    ]);
  });

  test("rejects a bad health_timeout and a short webhook_secret without showing the secret", () => {
    const text = service() + 'health_timeout = "forever"\nwebhook_secret = "short"\n';
    expect(problems(text).map((p) => p.message)).toEqual([
      'Invalid value "forever" for "health_timeout": expected a Go duration from 1s to 1h, such as "90s"',
      'Invalid value for "webhook_secret": expected at least 16 characters without control characters',
    ]);
  });

  test("rejects a checkout_binds other than ro or rw and a logging driver that is not a name, with their lines", () => {
    const text = service() + 'checkout_binds = "yes"\nlogging_drivers = [ "syslog", "a b", 1 ]\n';
    expect(problems(text).map((p) => `${p.line} ${p.key} ${p.message}`)).toEqual([
      `5 services[1].checkout_binds Invalid value "yes" for "checkout_binds": expected "ro" or "rw"`,
      `6 services[1].logging_drivers Invalid type for entry 3 of "logging_drivers": expected a string, got a number`,
      `6 services[1].logging_drivers Invalid entry 2 for "logging_drivers": expected a Docker logging driver name such as "journald"`,
    ]);
  });

  test("parses a config with every key", () => {
    const c = parseConfig(FULL, FILE);
    expect(c.file).toBe(FILE);
    expect(c.services).toHaveLength(2);
    const [caddy, pgo] = c.services;
    expect(caddy).toEqual({
      name: "caddy",
      user: "root",
      repository: "https://github.com/miekg/pgo-caddy",
      branch: "main",
      registries: [],
      env: {},
      envKeys: [],
      urls: [],
      import: "caddy/Caddyfile-import",
      reload: { container: "caddy", argv: ["caddy", "reload", "--config", "/etc/caddy/Caddy file", "--adapter", "caddyfile"] },
      healthTimeoutMs: 120_000,
      line: 2,
    });
    expect(pgo).toEqual({
      name: "pgo",
      user: "miek",
      repository: "https://oauth2:hunter2@gitlab.example.org/pgo.git",
      branch: "release/v1",
      compose: "deploy/compose.yaml",
      registries: [
        { user: "bot", token: "s3cr@t", host: "ghcr.io" },
        { user: "tok", token: "en", host: "[::1]:5000" },
      ],
      env: { MYENV: "bla", OTHER: "a=b", EMPTY: "" },
      envKeys: ["MYENV", "OTHER", "EMPTY"],
      urls: [
        { site: "slashdot.org", target: "pgo:8080" },
        { site: "http://b.example", target: "[2001:db8::1]:80" },
        { site: "a.example", target: "10.0.0.1:1" },
      ],
      networks: ["reverseproxy"],
      mount: { host: "nfs.example.org", port: 2049, path: "/share/pgo" },
      healthTimeoutMs: 90_000,
      ageIdentities: ["/etc/pgo/age/pgo.txt"],
      engine: "swarm",
      webhookSecret: "0123456789abcdef-secret",
      verify: "commits",
      trustRoot: "0123456789abcdef0123456789abcdef01234567",
      checkoutBinds: "rw",
      loggingDrivers: ["journald", "syslog"],
      line: 9,
    });
  });

  test("applies defaults and leaves optional keys out", () => {
    const [s] = parseConfig(service(), FILE).services;
    expect(s).toEqual({
      name: "web",
      user: "deploy",
      repository: "https://example.org/web.git",
      branch: "main",
      registries: [],
      env: {},
      envKeys: [],
      urls: [],
      healthTimeoutMs: 120_000,
      line: 1,
    });
    expect(Object.keys(s!)).not.toContain("networks");
    expect(Object.keys(s!)).not.toContain("mount");
  });

  test("accepts a config without services", () => {
    expect(parseConfig("# nothing yet\n", FILE).services).toEqual([]);
  });

  test("uses the service's user for a registry without one", () => {
    const [s] = parseConfig(service(`registries = ["tok@registry.example.org:5000"]`), FILE).services;
    expect(s!.registries).toEqual([{ user: "deploy", token: "tok", host: "registry.example.org:5000" }]);
  });

  test("parses a mount without a port and with an IPv6 host", () => {
    expect(parseConfig(service(`mount = "nfs://nfs/share"`), FILE).services[0]!.mount).toEqual({ host: "nfs", path: "/share" });
    expect(parseConfig(service(`mount = "nfs://[::1]:2049/"`), FILE).services[0]!.mount).toEqual({ host: "::1", port: 2049, path: "/" });
  });

  test("parses a reload with an IPv6 machine", () => {
    const [s] = parseConfig(service(`reload = "[::1]:caddy//exec\tcaddy reload"`), FILE).services;
    expect(s!.reload).toEqual({ container: "caddy", argv: ["caddy", "reload"] });
  });

  test("keeps a variable named __proto__ as a plain entry", () => {
    const [s] = parseConfig(service(`env = ["__proto__=x"]`), FILE).services;
    expect(s!.env["__proto__"]).toBe("x");
    expect(s!.envKeys).toEqual(["__proto__"]);
  });

  test("rejects an unknown key with its line number", () => {
    expect(problems(service(`ports = ["80:80"]`))).toEqual([
      { line: 5, key: "services[1].ports", message: `Unknown key "ports"` },
    ]);
  });

  test("rejects an unknown top-level key and table", () => {
    expect(problems(`dir = "/var/lib/pgo"\n${service()}[global]\nx = 1\n`)).toEqual([
      { line: 1, key: "dir", message: `Unknown key "dir"` },
      { line: 6, key: "global", message: `Unknown key "global"` },
    ]);
  });

  test("reports a missing required key at the [[services]] header", () => {
    expect(problems(`[[services]]\nname = "a"\n\n[[services]]\nname = "b"\nuser = "u"\n`)).toEqual([
      { line: 1, key: "services[1].user", message: `Missing required key "user"` },
      { line: 1, key: "services[1].repository", message: `Missing required key "repository"` },
      { line: 4, key: "services[2].repository", message: `Missing required key "repository"` },
    ]);
  });

  test("rejects services that are not an array of tables", () => {
    expect(problems(`services = "web"\n`)).toEqual([
      { line: 1, key: "services", message: `Invalid type for "services": expected an array of tables ([[services]]), got a string` },
    ]);
    expect(problems(`services = [1]\n`)).toEqual([
      { line: 1, key: "services[1]", message: `Invalid type for "services[1]": expected a table, got a number` },
    ]);
  });

  test("rejects keys of the wrong type", () => {
    expect(problems(service(`branch = 1\nenv = "A=1"\nnetworks = ["a", true]\nurls = ["x"]\ncompose = 1979-05-27\n`))).toEqual([
      { line: 5, key: "services[1].branch", message: `Invalid type for "branch": expected a string, got a number` },
      { line: 6, key: "services[1].env", message: `Invalid type for "env": expected an array of strings, got a string` },
      { line: 7, key: "services[1].networks", message: `Invalid type for entry 2 of "networks": expected a string, got a boolean` },
      { line: 8, key: "services[1].urls", message: `Invalid type for "urls": expected a table of strings, got an array` },
      { line: 9, key: "services[1].compose", message: `Invalid type for "compose": expected a string, got a date-time` },
    ]);
  });

  test("rejects a duplicate service name at its second use", () => {
    expect(problems(service("", "web") + "\n" + service("", "web"))).toEqual([
      { line: 7, key: "services[2].name", message: `Duplicate service name "web": also used by services[1]` },
    ]);
  });

  test("rejects names that are not compose project names", () => {
    for (const name of ["Web", "-web", "_web", "web.site", "we b", "", "a".repeat(64)]) {
      expect(problems(service("", name))).toEqual([
        {
          line: 2,
          key: "services[1].name",
          message: `Invalid value ${JSON.stringify(name)} for "name": expected a compose project name: lower-case letters, digits, "_" and "-", starting with a letter or digit, at most 63 characters`,
        },
      ]);
    }
    expect(parseConfig(service("", "0web_a-b" + "c".repeat(55)), FILE).services[0]!.name).toHaveLength(63);
  });

  test("rejects a user with whitespace, a colon or nothing", () => {
    for (const user of ["", "a b", "a:b"]) {
      expect(problems(`[[services]]\nname = "a"\nrepository = "r"\nuser = ${JSON.stringify(user)}\n`)).toEqual([
        { line: 4, key: "services[1].user", message: `Invalid value ${JSON.stringify(user)} for "user": expected a user name without whitespace or ":"` },
      ]);
    }
  });

  test("rejects a bad repository without quoting it", () => {
    expect(problems(`[[services]]\nname = "a"\nuser = "u"\nrepository = ""\n`)).toEqual([
      { line: 4, key: "services[1].repository", message: `Invalid value "" for "repository": expected a git URL` },
    ]);
    const [p] = problems(`[[services]]\nname = "a"\nuser = "u"\nrepository = "--upload-pack=touch /tmp/x https://t0ken@h/r"\n`);
    expect(p!.message).toBe(`Invalid value for "repository": a git URL cannot start with "-" or contain whitespace or control characters`);
  });

  test("rejects invalid branch names", () => {
    for (const branch of ["", "a b", "a..b", "-b", "a~1", "a^", "a:b", "a?", "a*", "a[b", "a\\\\b", "a/", "/a", "a//b", ".a", "a/.b", "a.lock", "a.", "@", "a@{1}"]) {
      const [p, ...rest] = problems(service(`branch = "${branch}"`));
      expect(rest).toEqual([]);
      expect(p!.line).toBe(5);
      expect(p!.key).toBe("services[1].branch");
      expect(p!.message).toStartWith(`Invalid value ${JSON.stringify(branch.replace("\\\\", "\\"))} for "branch": `);
    }
    for (const branch of ["main", "release/v1.2", "feature_x-y", "a@b"]) {
      expect(parseConfig(service(`branch = "${branch}"`), FILE).services[0]!.branch).toBe(branch);
    }
  });

  test("rejects compose and import paths that leave the repository", () => {
    const bad: [string, string][] = [
      ["", "expected a path relative to the repository"],
      ["/etc/compose.yaml", "expected a path relative to the repository, not an absolute path"],
      ["../x.yaml", "the path leaves the repository"],
      ["a/../../x.yaml", "the path leaves the repository"],
      ["a/..", "the path names the repository itself"],
      [".", "the path names the repository itself"],
      [".git/hooks/post-merge", `the path cannot be inside ".git"`],
      ["a\u0000b", "the path cannot contain a NUL character"],
    ];
    for (const key of ["compose", "import"]) {
      for (const [path, why] of bad) {
        expect(problems(service(`${key} = ${JSON.stringify(path)}`))).toEqual([
          { line: 5, key: `services[1].${key}`, message: `Invalid value ${JSON.stringify(path)} for "${key}": ${why}` },
        ]);
      }
    }
    expect(parseConfig(service(`compose = "./a/../b/compose.yaml"`), FILE).services[0]!.compose).toBe("./a/../b/compose.yaml");
  });

  test("rejects malformed reload commands", () => {
    const form = `expected "machine:container//exec command [args...]"`;
    const bad: [string, string][] = [
      ["caddy reload", form],
      ["localhost:caddy//reload now", `the command must be "exec", got "reload"`],
      ["localhost:caddy//execx caddy", `the command must be "exec", got "execx"`],
      ["localhost:caddy//exec", `missing the command to run after "exec"`],
      ["localhost:caddy//exec   ", `missing the command to run after "exec"`],
      ["caddy//exec caddy reload", form],
      ["::1:caddy//exec caddy", form],
      ["localhost:-caddy//exec caddy", `invalid container name "-caddy"`],
      ["localhost:caddy//exec caddy 'x", "unterminated single quote at column 29"],
    ];
    for (const [reload, why] of bad) {
      expect(problems(service(`reload = ${JSON.stringify(reload)}`))).toEqual([
        { line: 5, key: "services[1].reload", message: `Invalid value ${JSON.stringify(reload)} for "reload": ${why}` },
      ]);
    }
  });

  test("rejects mounts that are not nfs://host[:port]/path", () => {
    const form = `expected "nfs://host[:port]/path"`;
    const bad: [string, string][] = [
      ["/srv/share", form],
      ["smb://host/share", form],
      ["nfs://host", `${form}: missing path`],
      ["nfs:///share", `${form}: missing host`],
      ["nfs://host:0/share", `${form}: port "0" is not in 1-65535`],
      ["nfs://host:65536/share", `${form}: port "65536" is not in 1-65535`],
      ["nfs://host:x/share", `${form}: port "x" is not in 1-65535`],
      ["nfs://::1/share", `${form}: an IPv6 address must be in brackets`],
      ["nfs://ho st/share", `${form}: invalid host "ho st"`],
    ];
    for (const [mount, why] of bad) {
      expect(problems(service(`mount = ${JSON.stringify(mount)}`))).toEqual([
        { line: 5, key: "services[1].mount", message: `Invalid value ${JSON.stringify(mount)} for "mount": ${why}` },
      ]);
    }
  });

  test("rejects bad registries and env entries without showing secrets", () => {
    const text = service(
      `registries = [\n  "hunter2",\n  "user:@registry",\n  ":hunter3@registry",\n  "hunter4@",\n]\n` +
        `env = ["PASSWORD", "1X=hunter5", "OK=hunter6", "OK=hunter7", "Z=hunter\\u0000"]\n`,
    );
    const ps = problems(text);
    expect(ps).toEqual([
      { line: 5, key: "services[1].registries", message: `Invalid entry 1 for "registries": expected "[user:]token@registry"` },
      { line: 5, key: "services[1].registries", message: `Invalid entry 2 for "registries": missing token` },
      { line: 5, key: "services[1].registries", message: `Invalid entry 3 for "registries": missing user before ":"` },
      { line: 5, key: "services[1].registries", message: `Invalid entry 4 for "registries": missing registry after "@"` },
      { line: 11, key: "services[1].env", message: `Invalid entry 1 for "env": expected "KEY=VALUE"` },
      { line: 11, key: "services[1].env", message: `Invalid entry 2 for "env": the variable name must match [A-Za-z_][A-Za-z0-9_]*` },
      { line: 11, key: "services[1].env", message: `Duplicate variable "OK" in "env": entries 3 and 4` },
      { line: 11, key: "services[1].env", message: `Invalid entry 5 for "env": the value cannot contain a NUL character` },
    ]);
    let message = "";
    try {
      parseConfig(text, FILE);
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toContain("Invalid entry 1");
    expect(message).not.toMatch(/hunter|PASSWORD/);
  });

  test("rejects bad urls with the line of the key", () => {
    const ps = problems(service(`urls = {\n  "a.example" = "pgo",\n  "b.example" = "pgo:99999",\n  "c example" = "pgo:1",\n  "d.example" = 80,\n  "" = "x:1",\n  "e{" = "x:1",\n  "f.example" = ":80",\n  "g.example" = "::1:80",\n}\n`));
    expect(ps.map((p) => [p.line, p.key])).toEqual(Array(8).fill([5, "services[1].urls"]));
    expect(ps.map((p) => p.message)).toEqual([
      `Invalid value "pgo" for "a.example" in "urls": expected "host:port": missing port`,
      `Invalid value "pgo:99999" for "b.example" in "urls": expected "host:port": port "99999" is not in 1-65535`,
      `Invalid site address "c example" in "urls": expected no whitespace, quotes, "{", "}" or "#"`,
      `Invalid type for "d.example" in "urls": expected a string, got a number`,
      `Invalid site address "" in "urls": expected no whitespace, quotes, "{", "}" or "#"`,
      `Invalid site address "e{" in "urls": expected no whitespace, quotes, "{", "}" or "#"`,
      `Invalid value ":80" for "f.example" in "urls": expected "host:port": missing host`,
      `Invalid value "::1:80" for "g.example" in "urls": expected "host:port": an IPv6 address must be in brackets`,
    ]);
  });

  test("rejects empty network names", () => {
    expect(problems(service(`networks = ["ok", ""]`))).toEqual([
      { line: 5, key: "services[1].networks", message: `Invalid entry 2 for "networks": expected a network name without whitespace` },
    ]);
  });

  test("reports several problems at once, sorted by line", () => {
    const text = `[[services]]
name = "Bad"
user = "u"
repository = "r"
ports = ["80:80"]

[[services]]
# no name
user = "a b"
repository = "r"
mount = "nfs:/x"
`;
    expect(problems(text)).toEqual([
      { line: 2, key: "services[1].name", message: expect.stringContaining(`Invalid value "Bad" for "name"`) },
      { line: 5, key: "services[1].ports", message: `Unknown key "ports"` },
      { line: 7, key: "services[2].name", message: `Missing required key "name"` },
      { line: 9, key: "services[2].user", message: expect.stringContaining(`Invalid value "a b" for "user"`) },
      { line: 11, key: "services[2].mount", message: expect.stringContaining(`Invalid value "nfs:/x" for "mount"`) },
    ]);
    expect(() => parseConfig(text, FILE)).toThrow(`Config has 5 problems:\n  ${FILE}:2: services[1].name: Invalid value "Bad"`);
  });

  test("reports a TOML syntax error as one problem with its line", () => {
    const ps = problems(`${service()}env = ["A=1"\nbranch = "x"\n`);
    expect(ps).toHaveLength(1);
    expect(ps[0]!.line).toBe(6);
    expect(ps[0]!.key).toBe("");
    expect(ps[0]!.message).toStartWith("Invalid TOML: ");
    expect(ps[0]!.message).not.toContain("\n");
  });

  test("locates keys after multi-line strings, arrays, comments and quoted keys", () => {
    const text = `# [[services]] in a comment
[[services]]
name = "a"
user = "u"
repository = """
[[services]]
ports = 1
"""
'registries' = [ # ports = 2
  "x",
  '''
  ]
  ''',
]
env = [ "A=1", "B=2" ] # ]]]
urls.'a.example' = "pgo"
"ports" = 3
[services.mount]
x = 1
[[services.networks]]
`;
    expect(problems(text)).toEqual([
      { line: 5, key: "services[1].repository", message: expect.stringContaining("cannot start with") },
      { line: 9, key: "services[1].registries", message: expect.stringContaining("entry 1") },
      { line: 9, key: "services[1].registries", message: expect.stringContaining("entry 2") },
      { line: 16, key: "services[1].urls", message: expect.stringContaining(`"a.example"`) },
      { line: 17, key: "services[1].ports", message: `Unknown key "ports"` },
      { line: 18, key: "services[1].mount", message: expect.stringContaining("expected a string, got a table") },
      { line: 20, key: "services[1].networks", message: `Invalid type for entry 1 of "networks": expected a string, got a table` },
    ]);
  });

  test("falls back to the services line for an inline array of tables", () => {
    expect(problems(`\nservices = [ { name = "a", user = "u", repository = "r", ports = 1 } ]\n`)).toEqual([
      { line: 2, key: "services[1].ports", message: `Unknown key "ports"` },
    ]);
  });

  test("accepts CRLF line endings", () => {
    const text = service(`branch = "dev"\r\nports = 1\r\n`).replaceAll("\n", "\r\n").replaceAll("\r\r", "\r");
    expect(problems(text)).toEqual([{ line: 6, key: "services[1].ports", message: `Unknown key "ports"` }]);
  });
});

test("parseConfig() refuses a relative age_identities path, naming the entry", () => {
  expect(problems(service('age_identities = [ "keys.txt" ]\n'))).toEqual([
    { line: 5, key: "services[1].age_identities", message: 'Invalid entry 1 for "age_identities": expected an absolute path to an age identity file' },
  ]);
});

test("parseConfig() refuses an unknown engine", () => {
  expect(problems(service('engine = "kubernetes"\n')).map((p) => p.message)).toEqual([
    'Invalid value "kubernetes" for "engine": expected "compose" or "swarm"',
  ]);
});

describe("SERVICE_KEYS", () => {
  test("lists every key that a full config uses", () => {
    const keys = new Set<string>();
    for (const m of FULL.matchAll(/^"?([a-z_]+)"? *=/gm)) keys.add(m[1]!);
    expect([...keys].sort()).toEqual([...SERVICE_KEYS].sort());
  });
});

describe("loadConfig()", () => {
  const dir = mkdtempSync(join(tmpdir(), "pgo-config-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test("reads and parses a file", async () => {
    const file = join(dir, "pgo.toml");
    writeFileSync(file, FULL);
    const c = await loadConfig(file);
    expect(c.file).toBe(file);
    expect(c.services.map((s) => s.name)).toEqual(["caddy", "pgo"]);
  });

  test("reports a file it cannot read as a problem on line 0", async () => {
    const file = join(dir, "missing.toml");
    const err = await loadConfig(file).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    const [p, ...rest] = (err as ConfigError).problems;
    expect(rest).toEqual([]);
    expect(p).toMatchObject({ file, line: 0, key: "" });
    expect(p!.message).toStartWith("Cannot read config file: ");
  });
});
