import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import type { ComposeTarget } from "../src/compose.ts";
import { PolicyError } from "../src/errors.ts";
import type { Runner } from "../src/exec.ts";
import { makeRunner } from "../src/exec.ts";
import { memoryLogger } from "../src/log.ts";
import type { PolicyContext, Violation } from "../src/policy.ts";
import { makeMemoryCgroup, removeMemoryCgroup } from "../src/cgroup.ts";
import { composeModel } from "../src/compose_model.ts";
import { evaluatePolicy, formatViolations, resolveExisting, RULES } from "../src/policy.ts";
import { pullsImages, screenComposeTree, screenYaml } from "../src/yaml_screen.ts";
import type { Account } from "../src/users.ts";
import { tempDir } from "./helpers.ts";

const runner = makeRunner({ logger: memoryLogger(false) });
const scratch = tempDir("pgo-policy-");
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

type Tree = Record<string, string | { link: string }>;

let seq = 0;
/** A fresh directory holding `files`; `{ link }` makes a symlink. */
function tree(files: Tree): string {
  const dir = join(scratch, `case-${++seq}`);
  for (const [path, content] of Object.entries(files)) {
    const full = join(dir, path);
    mkdirSync(dirname(full), { recursive: true, mode: 0o755 });
    if (typeof content === "string") writeFileSync(full, content);
    else symlinkSync(content.link, full);
  }
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  return dir;
}

function account(dir: string, uid = 0): Account {
  return { name: uid === 0 ? "root" : "nobody", uid, gid: uid, groups: [uid], home: dir };
}

function target(dir: string, env: Record<string, string> = {}, uid = 0): ComposeTarget {
  return { project: "pol", dir, file: "compose.yaml", account: account(dir, uid), env, dockerConfig: join(dir, ".docker") };
}

function context(dir: string, networks?: string[]): PolicyContext {
  return { project: "pol", repoDir: dir, dataDir: join(scratch, "data", "pol"), ...(networks ? { networks } : {}) };
}

const rules = (v: Violation[]): string[] => v.map((x) => `${x.service}:${x.rule}`).sort();

const IMAGE = "    image: pgo-busybox:1\n    pull_policy: never\n";
const svc = (name: string, extra = ""): string => `  ${name}:\n${IMAGE}${extra}`;
const file = (services: string, rest = ""): string => `services:\n${services}${rest}`;

const BOMB = [
  'x-a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
  ...[..."bcdefghi"].map((n, i) => `x-${n}: &${n} [${Array(9).fill(`*${"abcdefghi"[i]}`).join(",")}]`),
  "services:\n  w:\n    image: pgo-busybox:1\n    labels:\n      bomb: *i\n",
].join("\n");

interface Case {
  name: string;
  files: Tree;
  env?: Record<string, string>;
  networks?: string[];
  expect: string[];
}

const DATA_DIR = join(scratch, "data", "pol");
mkdirSync(DATA_DIR, { recursive: true });

const CASES: Case[] = [
  {
    name: "allows expose, a named volume, no-new-privileges and binds of ./data and of the data directory",
    files: {
      "compose.yaml": file(
        svc("web", `    expose: ["8080"]\n    security_opt: ["no-new-privileges:true"]\n    volumes:\n      - ./data:/data\n      - cache:/cache\n      - \${DATA}/x:/x\n`),
        "volumes:\n  cache: {}\n",
      ),
    },
    env: { DATA: DATA_DIR },
    expect: [],
  },
  {
    name: "refuses privileged inside an include:d file",
    files: {
      "compose.yaml": `include:\n  - sub/inc.yaml\n${file(svc("web"))}`,
      "sub/inc.yaml": file(svc("inc", "    privileged: true\n")),
    },
    expect: ["inc:privileged"],
  },
  {
    name: "refuses privileged behind a YAML anchor and merge key",
    files: { "compose.yaml": `x-base: &base\n  privileged: true\n${file(svc("web", "    <<: *base\n"))}` },
    expect: ["web:privileged"],
  },
  {
    name: "refuses privileged behind a ${VAR} interpolation",
    files: { "compose.yaml": file(svc("web", "    privileged: ${PRIV:-false}\n")) },
    env: { PRIV: "true" },
    expect: ["web:privileged"],
  },
  {
    name: "allows the same ${VAR} file when the variable keeps its default",
    files: { "compose.yaml": file(svc("web", "    privileged: ${PRIV:-false}\n")) },
    expect: [],
  },
  {
    name: "refuses cap_add behind extends from another file",
    files: {
      "compose.yaml": file(svc("web", "    extends:\n      file: base/common.yaml\n      service: base\n")),
      "base/common.yaml": file("  base:\n    cap_add: [NET_ADMIN]\n"),
    },
    expect: ["web:cap_add"],
  },
  {
    name: "refuses a service of an inactive profile, which `pgoctl up NAME` could start",
    files: { "compose.yaml": file(svc("web") + svc("debug", "    profiles: [debug]\n    privileged: true\n")) },
    expect: ["debug:privileged"],
  },
  {
    name: "refuses a bind of /etc",
    files: { "compose.yaml": file(svc("web", "    volumes: [\"/etc:/host-etc:ro\"]\n")) },
    expect: ["web:bind_outside"],
  },
  {
    name: "refuses a bind of a committed symlink to /",
    files: { "compose.yaml": file(svc("web", "    volumes: [\"./root:/r\"]\n")), root: { link: "/" } },
    expect: ["web:bind_outside"],
  },
  {
    name: "refuses a bind of /var/run/docker.sock",
    files: { "compose.yaml": file(svc("web", "    volumes:\n      - type: bind\n        source: /var/run/docker.sock\n        target: /s\n")) },
    expect: ["web:docker_socket"],
  },
  {
    name: "refuses a bind of a committed symlink to the Docker socket",
    files: { "compose.yaml": file(svc("web", "    volumes: [\"./sock:/s\"]\n")), sock: { link: "/run/docker.sock" } },
    expect: ["web:docker_socket"],
  },
  {
    name: "refuses network_mode host",
    files: { "compose.yaml": file(svc("web", "    network_mode: host\n")) },
    expect: ["web:network_host"],
  },
  {
    name: "refuses published ports",
    files: { "compose.yaml": file(svc("web", "    ports: [\"8080:80\"]\n")) },
    expect: ["web:ports"],
  },
  {
    name: "refuses cap_add",
    files: { "compose.yaml": file(svc("web", "    cap_add: [SYS_ADMIN]\n")) },
    expect: ["web:cap_add"],
  },
  {
    name: "refuses security_opt seccomp=unconfined",
    files: { "compose.yaml": file(svc("web", "    security_opt: [\"seccomp=unconfined\", \"no-new-privileges:true\"]\n")) },
    expect: ["web:security_opt"],
  },
  {
    name: "allows an external network on the allow-list",
    files: {
      "compose.yaml": file(svc("web", "    networks: [proxy]\n"), "networks:\n  proxy:\n    external: true\n    name: reverse_proxy\n"),
    },
    networks: ["reverse_proxy"],
    expect: [],
  },
  {
    name: "refuses an external network missing from the allow-list",
    files: {
      "compose.yaml": file(svc("web", "    networks: [proxy]\n"), "networks:\n  proxy:\n    external: true\n    name: reverse_proxy\n"),
    },
    networks: ["other"],
    expect: ["web:network_not_allowed"],
  },
  {
    name: "allows any external network when the allow-list is empty",
    files: { "compose.yaml": file(svc("web", "    networks: [shared]\n"), "networks:\n  shared:\n    external: true\n") },
    networks: [],
    expect: [],
  },
  {
    name: "refuses a network that takes another project's name without external, under an allow-list",
    files: { "compose.yaml": file(svc("web", "    networks: [default]\n"), "networks:\n  default:\n    name: other_default\n") },
    networks: ["reverse_proxy"],
    expect: ["web:network_not_allowed"],
  },
  {
    name: "refuses volumes_from a container of another project but allows one of its own services",
    files: { "compose.yaml": file(svc("web", "    volumes_from: [\"container:other\", \"db:ro\"]\n") + svc("db")) },
    expect: ["web:volumes_from"],
  },
  {
    name: "refuses network_mode joining another project's container but allows its own",
    files: {
      "compose.yaml": file(
        svc("db", "    container_name: pol-db\n") + svc("a", "    network_mode: \"container:pol-db\"\n") +
          svc("b", "    network_mode: \"container:someone-else\"\n") + svc("c", "    network_mode: \"service:db\"\n"),
      ),
    },
    expect: ["b:network_join"],
  },
  {
    name: "refuses host namespaces, devices and shared ipc",
    files: {
      "compose.yaml": file(
        svc("web", "    ipc: host\n    pid: host\n    uts: host\n    userns_mode: host\n    cgroup: host\n    devices: [\"/dev/null:/dev/null\"]\n") +
          svc("db", "    ipc: \"container:other\"\n    pid: \"container:other\"\n"),
      ),
    },
    expect: ["db:ipc_shared", "db:pid_join", "web:cgroup_host", "web:devices", "web:ipc_host", "web:pid_host", "web:userns_host", "web:uts_host"],
  },
  {
    name: "refuses a volume whose driver options bind /etc",
    files: {
      "compose.yaml": file(svc("web", "    volumes: [\"etc:/e\"]\n"), "volumes:\n  etc:\n    driver_opts: {type: none, o: bind, device: /etc}\n"),
    },
    expect: ["web:volume_bind_outside"],
  },
  {
    name: "refuses a secret read from a file outside the checkout",
    files: { "compose.yaml": file(svc("web", "    secrets: [s]\n"), "secrets:\n  s:\n    file: /etc/hostname\n") },
    expect: ["web:file_outside"],
  },
];

describe("evaluatePolicy() on the real `docker compose config` model", () => {
  for (const c of CASES) {
    test.concurrent(c.name, async () => {
      const dir = tree(c.files);
      const model = await composeModel(runner, target(dir, c.env));
      expect(rules(evaluatePolicy(model, context(dir, c.networks)))).toEqual(c.expect);
    });
  }

  test.concurrent("a service of an inactive profile is not in the model of the active profiles", async () => {
    // `docker compose config` shows only active profiles; pgod therefore evaluates with every
    // profile (the default), since `docker compose up NAME` starts a profiled service.
    const dir = tree({ "compose.yaml": file(svc("web") + svc("debug", "    profiles: [debug]\n    privileged: true\n")) });
    const active = await composeModel(runner, target(dir), { profiles: "active" });
    expect(Object.keys((active as { services: object }).services)).toEqual(["web"]);
    expect(evaluatePolicy(active, context(dir))).toEqual([]);
  });

  test.concurrent("composeModel() runs as the service user and gets the same model", async () => {
    const dir = tree({ "compose.yaml": file(svc("web", "    cap_add: [NET_ADMIN]\n")) });
    const model = await composeModel(runner, target(dir, {}, 65534));
    expect(rules(evaluatePolicy(model, context(dir)))).toEqual(["web:cap_add"]);
  });

  test.concurrent("composeModel() says which file docker compose rejects and why", async () => {
    const dir = tree({ "compose.yaml": file(svc("web", "    no_such_key: 1\n")) });
    const e = await composeModel(runner, target(dir)).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(Error);
    expect(String((e as Error).message)).toStartWith('docker compose rejects "compose.yaml": ');
    expect((e as Error).message).toContain("no_such_key");
  });
});

describe("screenYaml()", () => {
  test("rejects a billion-laughs alias bomb in well under a second with bounded memory", () => {
    const rss = process.memoryUsage().rss;
    const started = performance.now();
    expect(() => screenYaml(BOMB, "compose.yaml")).toThrow(
      'Cannot use compose file "compose.yaml": its YAML aliases expand to more than 250000 nodes',
    );
    expect(performance.now() - started).toBeLessThan(500);
    expect(process.memoryUsage().rss - rss).toBeLessThan(64 * 1024 * 1024);
  });

  test("rejects aliases used more often than the yaml library's maxAliasCount", () => {
    const text = `x: &x {a: 1}\n${Array.from({ length: 101 }, (_, i) => `s${i}: *x`).join("\n")}\n`;
    expect(() => screenYaml(text, "c.yaml")).toThrow("it uses YAML aliases too often (the limit is 100)");
    expect(() => screenYaml(text, "c.yaml", { maxAliasCount: 1000 })).not.toThrow();
  });

  test("rejects nesting deeper than the limit, quickly even for 200,000 levels", () => {
    const block = (d: number): string => `${Array.from({ length: d }, (_, i) => `${"  ".repeat(i)}a:`).join("\n")} 1\n`;
    expect(() => screenYaml(block(63), "c.yaml")).not.toThrow();
    expect(() => screenYaml(block(64), "c.yaml")).toThrow('Cannot use compose file "c.yaml": it nests deeper than 64 levels');
    const started = performance.now();
    expect(() => screenYaml("[".repeat(200_000) + "]".repeat(200_000), "c.yaml")).toThrow("it nests deeper than 64 levels");
    expect(() => screenYaml(`${"- ".repeat(400_000)}x\n`, "c.yaml")).toThrow("it nests deeper than 64 levels");
    expect(performance.now() - started).toBeLessThan(1000);
  });

  test("rejects an alias that nests a deep anchor deeper than the limit", () => {
    const deep = `x: &d ${"[".repeat(40)}${"]".repeat(40)}\ny: ${"[".repeat(30)}*d${"]".repeat(30)}\n`;
    expect(() => screenYaml(deep, "c.yaml")).toThrow("it nests deeper than 64 levels");
  });

  test("rejects a 2 MB file by its size", () => {
    expect(() => screenYaml(`a: "${"x".repeat(2 * 1024 * 1024)}"\n`, "big.yaml")).toThrow(
      'Cannot use compose file "big.yaml": it is larger than 1048576 bytes',
    );
  });

  test("gives the line of invalid YAML, duplicate keys included", () => {
    expect(() => screenYaml("services:\n  web:\n    image: x\n   bad: [\n", "c.yaml")).toThrow(/it is not valid YAML: line \d+: /);
    expect(() => screenYaml("a: 1\nb:\n  c: 2\n  c: 3\n", "c.yaml")).toThrow("it is not valid YAML: line 4: Map keys must be unique");
  });

  test("rejects an alias that refers to its own anchor", () => {
    expect(() => screenYaml("a: &a [1, *a]\n", "c.yaml")).toThrow('the YAML alias "*a" refers to a node that contains it');
  });

  test("accepts compose's own tags and checks every document of a stream", () => {
    expect(() => screenYaml("services:\n  web:\n    ports: !reset []\n    labels: !override {a: b}\n", "c.yaml")).not.toThrow();
    expect(() => screenYaml(`services: {}\n---\n${BOMB}`, "c.yaml")).toThrow("its YAML aliases expand to more than");
  });
});

describe("screenComposeTree()", () => {
  const outside = tempDir("pgo-policy-outside-");
  writeFileSync(join(outside, "evil.yaml"), BOMB);
  afterAll(() => rmSync(outside, { recursive: true, force: true }));

  test("an alias bomb is refused without ever being handed to docker compose", async () => {
    const calls: string[][] = [];
    const recording: Runner = async (argv) => {
      calls.push([...argv]);
      throw new Error("docker compose must not run");
    };
    for (const files of [
      { "compose.yaml": BOMB },
      { "compose.yaml": "include: [inc/a.yaml]\nservices: {}\n", "inc/a.yaml": BOMB },
      { "compose.yaml": file("  web:\n    extends: {file: base.yaml, service: w}\n"), "base.yaml": BOMB },
    ] satisfies Tree[]) {
      const e = await composeModel(recording, target(tree(files))).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(PolicyError);
      expect((e as Error).message).toContain("its YAML aliases expand to more than");
    }
    expect(calls).toEqual([]);
  });

  test("names the included file that holds the bomb", async () => {
    const dir = tree({ "compose.yaml": "include:\n  - path: [inc/a.yaml]\nservices: {}\n", "inc/a.yaml": BOMB });
    await expect(screenComposeTree(dir, "compose.yaml")).rejects.toThrow('Cannot use compose file "inc/a.yaml": its YAML aliases');
  });

  test("refuses a compose file that is a symlink to /etc/shadow or to a file outside the repository", async () => {
    for (const link of ["/etc/shadow", join(outside, "evil.yaml")]) {
      const dir = tree({ "compose.yaml": { link } });
      await expect(screenComposeTree(dir, "compose.yaml")).rejects.toThrow(
        'Cannot use compose file "compose.yaml": it is a symlink out of the repository',
      );
    }
  });

  test("refuses includes and extends that leave the repository, by path, by symlink, by variable or by URL", async () => {
    const cases: [Tree, string][] = [
      [{ "compose.yaml": "include: [../x.yaml]\n" }, 'include "../x.yaml" is outside the repository'],
      [{ "compose.yaml": `include: ["${join(outside, "evil.yaml")}"]\n` }, "is outside the repository"],
      [{ "compose.yaml": "include: [sub/evil.yaml]\n", sub: { link: outside } }, 'Cannot use compose file "sub/evil.yaml": its path leads out of the repository through a symlink'],
      [{ "compose.yaml": "include: [inc.yaml]\n", "inc.yaml": { link: "/etc/shadow" } }, 'Cannot use compose file "inc.yaml": it is a symlink out of the repository'],
      [{ "compose.yaml": file("  w:\n    extends: {file: ../../etc/x.yaml, service: w}\n") }, 'extends file "../../etc/x.yaml" is outside the repository'],
      [{ "compose.yaml": "include: [\"${DIR}/a.yaml\"]\n" }, 'include "${DIR}/a.yaml" is built from a variable'],
      [{ "compose.yaml": "include: [\"oci://127.0.0.1:5000/x\"]\n" }, "is not a file in the repository"],
      [{ "compose.yaml": "include:\n  - path: a.yaml\n    project_directory: ${P}\n", "a.yaml": "services: {}\n" }, "project_directory \"${P}\" is built from a variable"],
    ];
    for (const [files, message] of cases) {
      await expect(screenComposeTree(tree(files), "compose.yaml")).rejects.toThrow(message);
    }
  });

  test("follows includes relative to an include's project_directory", async () => {
    const dir = tree({
      "compose.yaml": "include:\n  - path: p1/a.yaml\n    project_directory: p2\n",
      "p1/a.yaml": "include: [nested.yaml]\n",
      "p1/nested.yaml": "services: {}\n",
      "p2/nested.yaml": BOMB,
    });
    await expect(screenComposeTree(dir, "compose.yaml")).rejects.toThrow('Cannot use compose file "p2/nested.yaml": its YAML aliases');
  });

  test("accepts symlinks that stay inside the repository and include cycles, and refuses a missing compose file", async () => {
    const dir = tree({
      "compose.yaml": { link: "deploy/compose.yaml" },
      "deploy/compose.yaml": "include: [a.yaml]\nservices: {}\n",
      "deploy/a.yaml": "include: [compose.yaml]\n",
    });
    await screenComposeTree(dir, "compose.yaml");
    await expect(screenComposeTree(dir, "missing.yaml")).rejects.toThrow('Cannot use compose file "missing.yaml": it does not exist');
  });

  test("caps the number of files a compose file pulls in", async () => {
    const files: Tree = {};
    for (let i = 0; i < 6; i++) files[i === 0 ? "compose.yaml" : `f${i}.yaml`] = `include: [f${i + 1}.yaml]\n`;
    files["f6.yaml"] = "services: {}\n";
    const dir = tree(files);
    await expect(screenComposeTree(dir, "compose.yaml", { maxFiles: 5 })).rejects.toThrow("it pulls in more than 5 files");
    await screenComposeTree(dir, "compose.yaml", { maxFiles: 7 });
  });

  test("refuses a file over the size limit without reading past it", async () => {
    const dir = tree({ "compose.yaml": `a: "${"x".repeat(2 * 1024 * 1024)}"\n` });
    await expect(screenComposeTree(dir, "compose.yaml")).rejects.toThrow("it is larger than 1048576 bytes");
  });
});

const CG_NAME = `policy-test-${process.pid}`;
const cg = await makeMemoryCgroup(CG_NAME, 128 * 1024 * 1024);
const tiny = await makeMemoryCgroup(`${CG_NAME}-tiny`, 8 * 1024 * 1024);

describe("makeMemoryCgroup()", () => {
  afterAll(async () => {
    for (const d of [cg, tiny]) if (d) await removeMemoryCgroup(d);
    if (cg) await removeMemoryCgroup(dirname(cg)); // the shared "pgo" parent, when nothing else uses it
  });

  test("rejects a name that is not a plain path component", async () => {
    await expect(makeMemoryCgroup("../x", 1)).rejects.toThrow('Cannot make a memory cgroup for "../x": not a plain name');
  });

  test("makes a cgroup below pgod's own, or says none is available", () => {
    if (cg === null) return; // no usable memory controller on this machine
    expect(cg).toEndWith(`/pgo/${CG_NAME}`);
    const limit = ["memory.limit_in_bytes", "memory.max"].map((f) => {
      try {
        return readFileSync(join(cg, f), "utf8").trim();
      } catch {
        return null;
      }
    }).find((x) => x !== null);
    expect(limit).toBe(String(128 * 1024 * 1024));
  });

  test.skipIf(cg === null)("a child over the limit is killed, one under it is not", async () => {
    const alloc = (mib: number): string[] => [
      process.execPath, "-e", `const a = []; for (let i = 0; i < ${mib / 16}; i++) a.push(Buffer.alloc(16 << 20, 1)); console.log("ok")`,
    ];
    const env = { PATH: process.env["PATH"] ?? "/usr/bin:/bin" };
    const big = await runner(alloc(1024), { env, cgroup: cg!, check: false, timeoutMs: 30_000 });
    expect([big.exitCode, big.signal, big.stdout]).toEqual([137, "SIGKILL", ""]);
    const small = await runner(alloc(16), { env, cgroup: cg!, check: false, timeoutMs: 30_000 });
    expect([small.exitCode, small.stdout.trim()]).toEqual([0, "ok"]);
  });

  test.skipIf(cg === null)("composeModel() runs docker compose inside the cgroup and reports when it runs out", async () => {
    const dir = tree({ "compose.yaml": file(svc("web")) });
    const model = await composeModel(runner, target(dir), { cgroupDir: cg! });
    expect(evaluatePolicy(model, context(dir))).toEqual([]);
    const e = await composeModel(runner, target(dir), { cgroupDir: tiny! }).catch((x: unknown) => x);
    expect((e as Error).message).toBe('docker compose rejects "compose.yaml": it ran out of its memory limit');
  });
});

describe("evaluatePolicy() on hand-written models", () => {
  const ctx: PolicyContext = {
    project: "p", repoDir: "/srv/repo", dataDir: "/data/p",
    resolve: (p) => (p.startsWith("/srv/repo/link") ? p.replace("/srv/repo/link", "/etc") : p),
  };

  test("resolves binds through the injected resolver", () => {
    const model = { services: { w: { volumes: [{ type: "bind", source: "/srv/repo/link/x" }, { type: "bind", source: "/srv/repo/ok" }, { type: "bind", source: "/data/p/db" }] } } };
    expect(evaluatePolicy(model, ctx)).toEqual([{
      service: "w", key: "services.w.volumes", rule: "bind_outside", reason: RULES.find((r) => r.rule === "bind_outside")!.reason, value: "/srv/repo/link/x",
    }]);
  });

  test("treats values of unexpected types as set, and refuses a model that is not a mapping", () => {
    const model = { services: { w: { privileged: "yes", ports: "80", cap_add: { x: 1 }, devices: [], security_opt: ["seccomp=/srv/repo/allow-all.json", "label=disable"] } } };
    expect(rules(evaluatePolicy(model, ctx))).toEqual(["w:cap_add", "w:ports", "w:privileged", "w:security_opt", "w:security_opt"]);
    expect(() => evaluatePolicy([], ctx)).toThrow("Cannot check the compose model: it is not a mapping");
  });

  test("refuses a network_mode naming a network outside the allow-list", () => {
    const model = { services: { a: { network_mode: "other_default" }, b: { network_mode: "reverse_proxy" }, c: { network_mode: "none" } } };
    expect(rules(evaluatePolicy(model, { ...ctx, networks: ["reverse_proxy"] }))).toEqual(["a:network_not_allowed"]);
    expect(evaluatePolicy(model, ctx)).toEqual([]);
  });

  test("formatViolations() writes one line per violation", () => {
    const v = evaluatePolicy({ services: { web: { privileged: true, volumes: ["/etc:/e"] } } }, ctx);
    expect(formatViolations("compose.yaml", v)).toBe([
      `compose file "compose.yaml" service "web": "privileged" is refused: ${RULES[0]!.reason}`,
      `compose file "compose.yaml" service "web": "volumes" is refused: ${RULES.find((r) => r.rule === "bind_outside")!.reason}: "/etc"`,
    ].join("\n"));
  });

  test("RULES lists each rule once, with a one-line reason in the house grammar", () => {
    const ids = RULES.map((r) => r.rule);
    expect(new Set(ids).size).toBe(ids.length);
    for (const r of RULES) expect(r.reason).toMatch(/^[a-z][^\n]*[^.]$/);
  });
});

describe("resolveExisting()", () => {
  test("follows dangling symlinks and keeps the missing rest", () => {
    const dir = tree({ dangling: { link: "/etc/pgo-no-such-dir" }, inside: { link: "sub" }, "sub/f": "x" });
    expect(resolveExisting(join(dir, "dangling/x"))).toBe("/etc/pgo-no-such-dir/x");
    expect(resolveExisting(join(dir, "inside/f"))).toBe(join(resolveExisting(dir), "sub/f"));
    expect(resolveExisting(join(dir, "missing/../sub"))).toBe(join(resolveExisting(dir), "sub"));
  });
});

describe("pullsImages() and what screenComposeTree() says of pulling", () => {
  test("nothing is pulled when every service builds its image or has pull_policy never or build", () => {
    expect(pullsImages({ services: { a: { image: "x", pull_policy: "never" }, b: { build: "." }, c: { image: "y", pull_policy: "build" } } })).toBe(false);
    expect(pullsImages({ services: {} })).toBe(false);
    expect(pullsImages({ name: "empty" })).toBe(false);
  });

  test("a service that may pull, or anything unclear, counts as pulling", () => {
    expect(pullsImages({ services: { a: { image: "x", pull_policy: "never" }, b: { image: "y" } } })).toBe(true);
    expect(pullsImages({ services: { a: { image: "x", pull_policy: "missing" } } })).toBe(true);
    expect(pullsImages({ services: { a: { image: "x", pull_policy: "${POLICY}" } } })).toBe(true);
    expect(pullsImages({ services: { a: "nonsense" } })).toBe(true);
    expect(pullsImages({ services: ["a"] })).toBe(true);
    expect(pullsImages("text")).toBe(true);
    // As written, a service extending another may inherit an image that pulls.
    expect(pullsImages({ services: { a: { extends: { service: "b" }, pull_policy: "never" } } }, { literal: true })).toBe(true);
  });

  test("a lone file is judged from its text; a file that includes others always pulls", async () => {
    const never = "services:\n  web:\n    image: pgo-busybox:1\n    pull_policy: never\n";
    expect(await screenComposeTree(tree({ "compose.yaml": never }), "compose.yaml")).toEqual({ pulls: false });
    expect(await screenComposeTree(tree({ "compose.yaml": "services:\n  web:\n    image: x\n" }), "compose.yaml")).toEqual({ pulls: true });
    const included = tree({ "compose.yaml": `include: [more.yaml]\n${never}`, "more.yaml": never });
    expect(await screenComposeTree(included, "compose.yaml")).toEqual({ pulls: true });
    expect(await screenComposeTree(tree({ "compose.yaml": `${never}---\n${never}` }), "compose.yaml")).toEqual({ pulls: true });
  });
});
