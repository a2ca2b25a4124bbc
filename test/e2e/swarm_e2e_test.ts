/**
 * engine = "swarm" on a single-node Swarm made on loopback for this file (and left again at its
 * end, so that other tests see a plain engine): a stack comes up, a change rolls the service, a
 * changed config file rotates, a bad image is rolled back and held, a removed swarm service is
 * recreated, pgoctl ps/logs show tasks, down removes the stack. Several nodes cannot be made
 * here (Docker-in-Docker needs privileged containers). Run `bash scripts/build.sh` first.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  IMAGE, makeKey, metricsAddress, openssh, preflight, run, scenario, sshListening, sweepRun, uniqueName, waitFor,
} from "./harness.ts";

let madeSwarm = false;
let hadGwbridge = true;

beforeAll(async () => {
  await preflight();
  const state = (await run(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"])).stdout.trim();
  hadGwbridge = (await run(["docker", "network", "inspect", "docker_gwbridge"], { check: false })).code === 0;
  if (state !== "active") {
    await run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:2377"]);
    madeSwarm = true;
  }
});

afterAll(async () => {
  await sweepRun();
  if (madeSwarm) {
    await run(["docker", "swarm", "leave", "--force"], { check: false });
    if (!hadGwbridge) await run(["docker", "network", "rm", "docker_gwbridge"], { check: false });
  }
});

/** Container ids of the running tasks of `<stack>_web`, one a line (one replica: one id, or two while a task is replaced). */
async function webContainer(stack: string): Promise<string> {
  const r = await run(["docker", "ps", "-q", "--no-trunc", "--filter", `label=com.docker.swarm.service.name=${stack}_web`, "--filter", "status=running"]);
  return r.stdout.trim();
}

const stackFile = (o: { env?: string; image?: string } = {}): string => `services:
  web:
    image: ${o.image ?? IMAGE}
    pull_policy: never
    container_name: ignored-by-swarm
    command: ["/bin/httpd", "-f", "-p", "8080"]
    environment:
      VERSION: "${o.env ?? "1"}"
    configs:
      - source: site
        target: /www/index.html
    deploy:
      replicas: 1
      update_config:
        order: stop-first
configs:
  site:
    file: ./index.html
`;

describe("engine = swarm with a real single-node Swarm", () => {
  test("a stack deploys, rolls, rotates its config, rolls back a bad image, heals, and answers pgoctl", async () => {
    await scenario("swarm", async (env) => {
      const name = uniqueName("swarm");
      const key = await makeKey(await env.tempDir(), "team");
      const repo = await env.repo({ "compose.yaml": stackFile(), "index.html": "one\n", "ssh/team.pub": key.pub });
      env.defer(async () => {
        await run(["docker", "stack", "rm", name], { check: false });
      });
      const pg = await env.pgod([{ name, repository: repo.bare, extra: 'engine = "swarm"\nhealth_timeout = "60s"\n' }]);
      const { port } = await sshListening(pg);
      const client = { port, key, knownHosts: "/dev/null" };
      // Up: one running task of the new stack, the config under a content-hashed name.
      const first = await waitFor("a running task", () => webContainer(name), (id) => id !== "" && !id.includes("\n"), { timeoutMs: 120_000 });
      await pg.waitForLog(new RegExp(`msg=deployed service=${name} `), { timeoutMs: 120_000 });
      expect(pg.log()).toContain("services.web.container_name: Swarm names its tasks itself");
      const configs = async (): Promise<string[]> =>
        (await run(["docker", "config", "ls", "--format", "{{.Name}}", "--filter", `label=com.docker.stack.namespace=${name}`])).stdout.split("\n").filter(Boolean);
      const c1 = await configs();
      expect(c1).toHaveLength(1);
      expect(c1[0]).toMatch(new RegExp(`^${name}_site_[0-9a-f]{12}$`));
      const served = await run(["docker", "exec", first, "cat", "/www/index.html"]);
      expect(served.stdout).toBe("one\n");

      // check names what the stack leaves out, as warnings.
      const check = await openssh(client, `${name}//check`);
      expect(check.code).toBe(0);
      expect(check.stdout).toContain("warning: services.web.container_name: Swarm names its tasks itself");
      // pgoctl: ps shows the task, logs answers, exec runs in the local task.
      const ps = await openssh(client, `${name}//ps`);
      expect(ps.code).toBe(0);
      expect(ps.stdout).toContain(`${name}_web.1`);
      const logs = await openssh(client, `${name}//logs --tail 10`);
      expect(logs.code).toBe(0);
      const exec = await openssh(client, `${name}//exec web cat /www/index.html`);
      expect({ code: exec.code, stdout: exec.stdout }).toEqual({ code: 0, stdout: "one\n" });
      const metrics = await (await fetch(`http://${await metricsAddress(pg)}/metrics`)).text();
      expect(metrics).toContain(`pgo_swarm_replicas{service="${name}",swarm_service="web",state="running"} 1`);

      // A change rolls the service; a changed config file rotates to a new object.
      await repo.commit({ "compose.yaml": stackFile({ env: "2" }), "index.html": "two\n" }, "two");
      const second = await waitFor("a new task", () => webContainer(name), (id) => id !== "" && id !== first && !id.includes("\n"), { timeoutMs: 120_000 });
      expect((await run(["docker", "exec", second, "cat", "/www/index.html"])).stdout).toBe("two\n");
      await pg.waitForLog(new RegExp(`msg=deployed service=${name} `), { count: 2, timeoutMs: 120_000 });
      const c2 = await configs();
      expect(c2.some((c) => !c1.includes(c))).toBe(true);

      // A bad image: the task is rejected, pgod rolls back to the last good commit and holds the bad one.
      const bad = await repo.commit({ "compose.yaml": stackFile({ env: "3", image: "pgo-no-such-image:1" }) }, "bad image");
      await pg.waitForLog(new RegExp(`msg="deploy failed, rolling back" service=${name} commit=${bad.slice(0, 12)}`), { timeoutMs: 180_000 });
      await pg.waitForLog(new RegExp(`msg=deployed service=${name} `), { count: 3, timeoutMs: 180_000 });
      const back = await waitFor("the good spec running again", () => webContainer(name), (id) => id !== "" && !id.includes("\n"), { timeoutMs: 120_000 });
      const envOf = await run(["docker", "exec", back, "env"]);
      expect(envOf.stdout).toContain("VERSION=2");
      const history = await openssh(client, `${name}//history`);
      expect(history.stdout).toContain("rolled back");

      // A removed swarm service is recreated by pgod (Swarm heals tasks, not removed services).
      await run(["docker", "service", "rm", `${name}_web`]);
      await waitFor("the service recreated", () => webContainer(name), (id) => id !== "" && !id.includes("\n"), { timeoutMs: 120_000 });

      // down removes the stack; up deploys it again.
      const down = await openssh(client, `${name}//down`);
      expect(down.code).toBe(0);
      // down returns once the stack's containers are gone.
      expect(await webContainer(name)).toBe("");
      expect((await run(["docker", "service", "ls", "-q", "--filter", `label=com.docker.stack.namespace=${name}`])).stdout.trim()).toBe("");
      const up = await openssh(client, `${name}//up`);
      expect(up.code).toBe(0);
      await waitFor("the stack up again", () => webContainer(name), (id) => id !== "" && !id.includes("\n"), { timeoutMs: 120_000 });
    });
  }, 900_000);
});
