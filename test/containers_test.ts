import { expect, test } from "bun:test";
import type { ContainerInfo } from "../src/containers.ts";
import { allRunning, dockerSocket, healthOf } from "../src/containers.ts";

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
