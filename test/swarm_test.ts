import { expect, test } from "bun:test";
import type { SwarmService, SwarmTask } from "../src/swarm.ts";
import { parseSwarmService, parseSwarmTask, stackReadiness } from "../src/swarm.ts";
import { planStack, stackWarnings } from "../src/swarm_plan.ts";

const model = {
  name: "shop",
  services: {
    web: {
      image: "pgo-busybox:1", pull_policy: "never", container_name: "shop-web", restart: "always", entrypoint: null,
      build: { context: "/repo" }, depends_on: { db: { condition: "service_healthy", required: true } },
      configs: [{ source: "site", target: "/www/index.html" }], networks: { default: null },
    },
    db: { image: "pgo-busybox:1", pull_policy: "never", networks: { default: null } },
  },
  networks: { default: { name: "shop_default", ipam: {} }, shared: { name: "proxy", external: true } },
  volumes: { data: { name: "shop_data" } },
  configs: { site: { name: "shop_site", file: "/repo/index.html" } },
  secrets: { pw: { name: "shop_pw", file: "/repo/pw.txt" } },
};
const files: Record<string, string> = { "/repo/index.html": "hello", "/repo/pw.txt": "secret" };
const read = async (p: string): Promise<Uint8Array> => new TextEncoder().encode(files[p] ?? "");

test("planStack() drops what stack deploy rejects, with a warning for check, and keeps the rest", async () => {
  const plan = await planStack(model, "shop", read);
  const stack = JSON.parse(plan.text);
  expect(Object.keys(stack.services.web).sort()).toEqual(["configs", "depends_on", "image", "networks"]);
  expect(stack.services.web.depends_on).toEqual(["db"]);
  expect(stack.name).toBeUndefined();
  expect(plan.warnings).toEqual([
    "services.web.container_name: Swarm names its tasks itself",
    "services.web.restart: Swarm uses deploy.restart_policy instead",
    "services.web.build: stack deploy does not build images: the image must exist on every node",
    "services.web.depends_on: Swarm does not wait for conditions (service_healthy, service_completed_successfully)",
  ]);
  expect(plan.resolveImage).toBe("never");
  expect(plan.services).toEqual(["db", "web"]);
  // Default names are left to the stack; other names (an external network) stay.
  expect(stack.networks).toEqual({ default: {}, shared: { name: "proxy", external: true } });
  expect(stack.volumes).toEqual({ data: {} });
});

test("planStack() names configs and secrets after their content, so a change makes a new object", async () => {
  const a = await planStack(model, "shop", read);
  files["/repo/index.html"] = "hello again";
  const b = await planStack(model, "shop", read);
  const name = (p: typeof a, k: string): string => p.objects.find((o) => o.key === k)!.name;
  expect(name(a, "site")).toMatch(/^shop_site_[0-9a-f]{12}$/);
  expect(name(b, "site")).not.toBe(name(a, "site"));
  expect(name(b, "pw")).toBe(name(a, "pw"));
  expect(JSON.parse(b.text).configs.site).toEqual({ name: name(b, "site"), file: "/repo/index.html" });
});

test("planStack() asks the registry for images that may be pulled, and refuses a service without an image", async () => {
  const pulled = await planStack({ services: { web: { image: "127.0.0.1:5000/app:1" } } }, "p", read);
  expect(pulled.resolveImage).toBe("always");
  await expect(planStack({ services: { web: { build: { context: "." } } } }, "p", read)).rejects.toThrow('service "web" has no image');
});

const spec = (image: string): unknown => ({ Image: image, Args: ["x"] });
const svc = (name: string, o: Partial<SwarmService["Spec"]> = {}, update?: string): SwarmService => ({
  ID: `id-${name}`,
  Spec: { Name: `shop_${name}`, Mode: { Replicated: { Replicas: 2 } }, TaskTemplate: { ContainerSpec: spec("v2") }, ...o },
  ...(update ? { UpdateStatus: { State: update, Message: "update rolled back due to failure" } } : {}),
});
const task = (name: string, state: string, image = "v2", desired = "running", created = "2030-01-01T00:00:00Z", err = ""): SwarmTask => ({
  ServiceID: `id-${name}`, DesiredState: desired, CreatedAt: created, NodeID: "n1",
  Spec: { ContainerSpec: spec(image) }, Status: { State: state, ...(err ? { Err: err } : {}) },
});
const since = Date.parse("2029-12-31T23:59:00Z");

test("stackReadiness() is ready only when every service runs its desired replicas of the current spec", () => {
  const s = [svc("web")];
  expect(stackReadiness("shop", ["web"], s, [task("web", "running"), task("web", "running", "v1")], since).state).toBe("waiting");
  const ready = stackReadiness("shop", ["web"], s, [task("web", "running"), task("web", "running")], since);
  expect(ready.state).toBe("ready");
  expect(ready.replicas).toEqual([{ service: "web", desired: 2, running: 2 }]);
  expect(stackReadiness("shop", ["web", "db"], s, [task("web", "running"), task("web", "running")], since).why).toBe('no swarm service "shop_db" yet');
});

test("stackReadiness() fails on Swarm's own rollback or pause and on a failed or rejected task of the new spec", () => {
  expect(stackReadiness("shop", ["web"], [svc("web", {}, "rollback_completed")], [], since)).toMatchObject({
    state: "failed", why: 'swarm service "shop_web": update rollback completed: update rolled back due to failure',
  });
  expect(stackReadiness("shop", ["web"], [svc("web", {}, "paused")], [], since).state).toBe("failed");
  const rejected = stackReadiness("shop", ["web"], [svc("web")], [task("web", "rejected", "v2", "shutdown", undefined, "No such image: nope:1")], since);
  expect(rejected).toMatchObject({ state: "failed", why: 'task of "shop_web" rejected: No such image: nope:1' });
  // A failure of an earlier deploy is history, not this deploy's verdict.
  const old = task("web", "failed", "v2", "shutdown", "2020-01-01T00:00:00Z", "exit 1");
  expect(stackReadiness("shop", ["web"], [svc("web")], [old, task("web", "running"), task("web", "running")], since).state).toBe("ready");
});

test("stackReadiness() does not hang on a one-shot service whose tasks completed", () => {
  const job = svc("migrate", { Mode: { Replicated: { Replicas: 1 } }, TaskTemplate: { ContainerSpec: spec("v2"), RestartPolicy: { Condition: "none" } } });
  expect(stackReadiness("shop", ["migrate"], [job], [task("migrate", "complete", "v2", "shutdown")], since).state).toBe("ready");
  expect(stackReadiness("shop", ["migrate"], [job], [], since).state).toBe("waiting");
});

test("stackWarnings() gives check the same warnings for a compose file as written", () => {
  expect(stackWarnings({ services: { web: { image: "x", build: ".", restart: "always", depends_on: ["db"] }, db: { image: "y" } } })).toEqual([
    "services.web.build: stack deploy does not build images: the image must exist on every node",
    "services.web.restart: Swarm uses deploy.restart_policy instead",
  ]);
  expect(stackWarnings("not a model")).toEqual([]);
});

test("parseSwarmService() and parseSwarmTask() keep the fields pgod reads from the engine's JSON and drop an item without them", () => {
  const raw: unknown = {
    ID: "s1", Version: { Index: 9 },
    Spec: {
      Name: "shop_web", Labels: { "com.docker.stack.namespace": "shop", bad: 3 },
      Mode: { Replicated: { Replicas: 3 } }, TaskTemplate: { ContainerSpec: { Image: "v2" }, RestartPolicy: { Condition: "none" } },
    },
    UpdateStatus: { State: "rollback_completed", Message: "update rolled back" },
  };
  expect(parseSwarmService(raw)).toEqual({
    ID: "s1",
    Spec: {
      Name: "shop_web", Labels: { "com.docker.stack.namespace": "shop" },
      Mode: { Replicated: { Replicas: 3 } }, TaskTemplate: { ContainerSpec: { Image: "v2" }, RestartPolicy: { Condition: "none" } },
    },
    UpdateStatus: { State: "rollback_completed", Message: "update rolled back" },
  });
  expect(parseSwarmService({ ID: "s1", Spec: { Name: "g", Mode: { Global: {} } } })?.Spec.Mode).toEqual({ Global: {} });
  for (const bad of [null, [], { ID: 1, Spec: { Name: "x" } }, { ID: "s", Spec: { Name: 2 } }, { ID: "s" }]) expect(parseSwarmService(bad)).toBeNull();

  const t: unknown = {
    ID: "t1", ServiceID: "s1", DesiredState: "running", CreatedAt: "2030-01-01T00:00:00Z", NodeID: "n1", Slot: 1,
    Spec: { ContainerSpec: { Image: "v2" } }, Status: { State: "running", ContainerStatus: { ContainerID: "c1", PID: 4 } },
  };
  expect(parseSwarmTask(t)).toEqual({
    ServiceID: "s1", DesiredState: "running", CreatedAt: "2030-01-01T00:00:00Z", NodeID: "n1", Slot: 1,
    Spec: { ContainerSpec: { Image: "v2" } }, Status: { State: "running", Err: "", Message: "", ContainerStatus: { ContainerID: "c1" } },
  });
  for (const bad of [{ ServiceID: "s1", DesiredState: "running" }, { ServiceID: "s1", DesiredState: "running", Status: { State: 5 } }, "x"]) {
    expect(parseSwarmTask(bad)).toBeNull();
  }
});
