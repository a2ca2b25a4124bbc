import { expect, test } from "bun:test";
import type { ContainerInfo } from "../src/containers.ts";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { allRunning, dockerSocket, healthOf, makeDockerContainers, parseContainer } from "../src/containers.ts";
import { EngineError } from "../src/errors.ts";

const c = (service: string, state: string, health = ""): ContainerInfo => ({ id: service + state, project: "p", service, state, health, workingDir: "/x" });

test("dockerSocket() takes a unix DOCKER_HOST and falls back to the default socket", () => {
  expect(dockerSocket({ DOCKER_HOST: "unix:///run/other.sock" })).toBe("/run/other.sock");
  expect(dockerSocket({ DOCKER_HOST: "tcp://127.0.0.1:2375" })).toBe("/var/run/docker.sock");
  expect(dockerSocket({})).toBe("/var/run/docker.sock");
});

test("healthOf() reads the health from the engine's status text", () => {
  expect(healthOf("Up 5 seconds (healthy)")).toBe("healthy");
  expect(healthOf("Up 1 second (health: starting)")).toBe("starting");
  expect(healthOf("Up 2 minutes (unhealthy)")).toBe("unhealthy");
  expect(healthOf("Up 2 minutes")).toBe("");
});

test("allRunning() wants a running (or restarting) container for every expected service", () => {
  expect(allRunning(["web", "db"], [c("web", "running"), c("db", "restarting")])).toBe(true);
  expect(allRunning(["web", "db"], [c("web", "running"), c("db", "exited")])).toBe(false);
  expect(allRunning(["web"], [])).toBe(false);
  // Without a list of expected services: something must run, and everything must be up.
  expect(allRunning([], [])).toBe(false);
  expect(allRunning([], [c("a", "running"), c("b", "exited")])).toBe(false);
  expect(allRunning([], [c("a", "running")])).toBe(true);
});

test("parseContainer() keeps the compose labels, state and health of the engine's JSON and drops an item without an ID or state", () => {
  const raw: unknown = {
    Id: "c1", State: "running", Status: "Up 3 seconds (healthy)", Names: ["/p-web-1"],
    Labels: { "com.docker.compose.project": "p", "com.docker.compose.service": "web", "com.docker.compose.project.working_dir": "/srv/p", odd: 1 },
  };
  expect(parseContainer(raw)).toEqual({ id: "c1", state: "running", health: "healthy", project: "p", service: "web", workingDir: "/srv/p" });
  expect(parseContainer({ Id: "c2", State: "exited", Labels: null })).toEqual({ id: "c2", state: "exited", health: "", project: "", service: "", workingDir: "" });
  for (const bad of [null, "x", { Id: "c3" }, { State: "running" }, { Id: 4, State: "running" }]) expect(parseContainer(bad)).toBeNull();
});

test("makeDockerContainers() reads the engine's socket, and an error status or an answer that is not a list is an EngineError", async () => {
  const dir = mkdtempSync(join(tmpdir(), "pgo-containers-"));
  const socket = join(dir, "docker.sock");
  let answer: { status: number; body: unknown } = { status: 200, body: [{ Id: "c1", State: "running", Labels: { "com.docker.compose.project": "p" } }, { bogus: true }] };
  const server = Bun.serve({ unix: socket, fetch: () => Response.json(answer.body, { status: answer.status }) });
  try {
    const c = makeDockerContainers(socket, 5000);
    expect((await c.ofProject("p")).map((x) => x.id)).toEqual(["c1"]);
    answer = { status: 500, body: { message: "boom" } };
    const e = await c.all().catch((x: unknown) => x);
    expect(e).toBeInstanceOf(EngineError);
    expect({ status: (e as EngineError).status, message: (e as EngineError).message }).toEqual({ status: 500, message: "Cannot list containers: the Docker engine answered 500" });
    answer = { status: 200, body: { not: "a list" } };
    await expect(c.all()).rejects.toThrow("Cannot list containers: the Docker engine's answer is not a list");
  } finally {
    await server.stop(true);
    rmSync(dir, { recursive: true, force: true });
  }
});
