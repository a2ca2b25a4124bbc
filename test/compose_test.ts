import { expect, test } from "bun:test";
import { composeDependencies, composeEnv, findComposeFile, subcommandOf } from "../src/compose.ts";

const files = (m: Record<string, string>) => async (p: string) => m[p] ?? null;

test("composeDependencies() follows include, env_file and extends, and adds .env", async () => {
  const deps = await composeDependencies(files({
    "compose.yaml": "include:\n  - inc/a.yaml\n  - path: [inc/b.yaml]\n    env_file: inc/b.env\nservices:\n  web:\n    env_file: [web.env, {path: opt.env, required: false}]\n    extends:\n      file: base.yaml\n      service: x\n",
    "inc/a.yaml": "services:\n  a:\n    env_file: a.env\n",
    "base.yaml": "services: {}\n",
  }), "compose.yaml");
  expect(deps !== "all" && [...deps].sort()).toEqual([
    ".env", "a.env", "base.yaml", "compose.yaml", "inc/a.yaml", "inc/b.env", "inc/b.yaml", "opt.env", "web.env",
  ]);
});

test("composeDependencies() gives up to \"all\" when a path needs interpolation", async () => {
  expect(await composeDependencies(files({ "compose.yaml": "include: [\"${DIR}/x.yaml\"]\n" }), "compose.yaml")).toBe("all");
});

test("composeDependencies() ignores paths outside the repository and survives bad YAML", async () => {
  const deps = await composeDependencies(files({ "c.yaml": "services:\n  w:\n    env_file: ../../etc/x\n" , "d.yaml": "{{{" }), "c.yaml");
  expect(deps !== "all" && [...deps].sort()).toEqual([".env", "c.yaml"]);
  expect(await composeDependencies(files({ "d.yaml": ": : :\n\t{{" }), "d.yaml")).not.toBe("all");
});

test("composeDependencies() is not fooled by an alias bomb", async () => {
  const bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n';
  const started = performance.now();
  const deps = await composeDependencies(files({ "compose.yaml": bomb }), "compose.yaml");
  expect(performance.now() - started).toBeLessThan(2000);
  expect(deps !== "all" && [...deps].sort()).toEqual([".env", "compose.yaml"]);
});

test("findComposeFile() prefers compose.yaml, then compose.yml, docker-compose.yml, docker-compose.yaml", () => {
  expect(findComposeFile((f) => ["docker-compose.yaml", "compose.yml"].includes(f))).toBe("compose.yml");
  expect(findComposeFile((f) => f === "docker-compose.yaml")).toBe("docker-compose.yaml");
  expect(findComposeFile(() => false)).toBeNull();
  expect(findComposeFile((f) => f === "x/app.yaml", "x/app.yaml")).toBe("x/app.yaml");
  expect(findComposeFile((f) => f === "compose.yaml", "x/app.yaml")).toBeNull();
});

test("subcommandOf() gives bounded metric labels, never raw arguments", () => {
  expect(subcommandOf(["up", "--detach"])).toBe("up");
  expect(subcommandOf(["--verbose", "logs", "web"])).toBe("logs");
  expect(subcommandOf(["rm -rf /"])).toBe("other");
});

test("composeDependencies() does not parse a file over 1 MiB and counts every change as relevant", async () => {
  const big = "x: " + "y".repeat(2 * 1024 * 1024) + "\n";
  const started = performance.now();
  expect(await composeDependencies(files({ "compose.yaml": big }), "compose.yaml")).toBe("all");
  expect(performance.now() - started).toBeLessThan(1000);
});

test("composeEnv() talks to pgod's engine: a service's DOCKER_HOST or DOCKER_CONTEXT never reaches compose", () => {
  const account = { name: "app", uid: 1000, gid: 1000, groups: [1000], home: "/home/app" };
  const t = { project: "app", dir: "/srv/app", file: "compose.yaml", account, env: { DOCKER_HOST: "tcp://elsewhere:2375", DOCKER_CONTEXT: "x", TAG: "1" }, dockerConfig: "/d" };
  const saved = process.env["DOCKER_HOST"];
  try {
    delete process.env["DOCKER_HOST"];
    const plain = composeEnv(t);
    expect([plain["DOCKER_HOST"], plain["DOCKER_CONTEXT"], plain["TAG"], plain["DOCKER_CONFIG"]]).toEqual([undefined, undefined, "1", "/d"]);
    process.env["DOCKER_HOST"] = "unix:///run/other.sock";
    expect(composeEnv(t)["DOCKER_HOST"]).toBe("unix:///run/other.sock");
  } finally {
    if (saved === undefined) delete process.env["DOCKER_HOST"];
    else process.env["DOCKER_HOST"] = saved;
  }
});
