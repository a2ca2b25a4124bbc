/**
 * The Docker daemon stopped in the middle of a deploy and started again: pgod recovers and
 * converges on the new commit, with exactly one container.
 *
 * The daemon stopped is a real dockerd of its own (own socket, data root, exec root and managed
 * containerd, no bridge, no iptables) in a network namespace of its own (`unshare --net`, with
 * only loopback up), so that stopping it leaves the machine's engine, and every other test or
 * benchmark using it, alone. A dockerd started with `--bridge none` deletes the default bridge
 * `docker0` of the namespace it runs in: in the host's namespace that took the machine's engine
 * off its default network until it restarted. The test talks to the engine over its unix socket,
 * which a network namespace does not hide, and checks at the end that `docker0` is still there. pgod reaches it through DOCKER_HOST (its own reads of
 * the engine's socket) and through a `docker` wrapper first on its PATH (every docker and compose
 * child). The file sits in serial/ all the same: starting an engine costs these two cores enough
 * to upset the timings of concurrent tests. Run `bash scripts/build.sh` first.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { composeExec, IMAGE, preflight, run, scenario, statusOf, waitFor } from "../../e2e/harness.ts";
import type { Container, Env } from "../../e2e/harness.ts";
import { serve, version } from "../faults.ts";

/** Whether the host's default bridge is there (the machine's engine made it at its start). */
async function hasDocker0(): Promise<boolean> {
  return (await run(["ip", "link", "show", "docker0"], { check: false })).code === 0;
}

let docker0AtStart = false;

beforeAll(async () => {
  preflight();
  docker0AtStart = await hasDocker0();
});

afterAll(async () => {
  // The machine's engine was never touched; say so loudly if it is not answering.
  await run(["docker", "info", "--format", "{{.ServerVersion}}"]);
});

/** A dockerd of the test's own, started and stopped like scripts/deps.sh starts the machine's. */
class PrivateEngine {
  pid: number | null = null;

  private constructor(readonly root: string) {}

  /** Lays out the engine's dirs under `root` and starts it. */
  static async start(root: string): Promise<PrivateEngine> {
    const e = new PrivateEngine(root);
    await mkdir(join(root, "data"), { recursive: true });
    await mkdir(join(root, "exec"), { recursive: true });
    await writeFile(join(root, "daemon.json"), "{}\n");
    await e.up();
    return e;
  }

  get socket(): string {
    return join(this.root, "docker.sock");
  }

  get host(): string {
    return `unix://${this.socket}`;
  }

  /**
   * Starts dockerd detached (setsid, output to a log file) in a new network namespace with
   * loopback up, and waits until it answers. setsid, unshare and sh each exec the next, so the
   * pid printed is dockerd's.
   */
  async up(): Promise<void> {
    const argv = [
      "dockerd", "--config-file", join(this.root, "daemon.json"), "--host", this.host,
      "--data-root", join(this.root, "data"), "--exec-root", join(this.root, "exec"),
      "--pidfile", join(this.root, "docker.pid"), "--bridge", "none", "--iptables=false", "--ip-masq=false",
      "--ip-forward=false",
    ];
    const quoted = argv.map((a) => `'${a}'`).join(" ");
    const inNetns = `unshare --net sh -c 'ip link set lo up && exec "$@"' sh ${quoted}`;
    await run(["sh", "-c", `setsid ${inNetns} >>'${join(this.root, "dockerd.log")}' 2>&1 </dev/null & echo $!`]).then((r) => {
      this.pid = Number(r.stdout.trim());
    });
    await waitFor("the private dockerd to answer", () => this.docker(["info", "--format", "{{.ServerVersion}}"]), (r) => r.code === 0, {
      timeoutMs: 60_000,
      intervalMs: 250,
    });
  }

  /** Stops dockerd with SIGTERM (as a service manager does) and waits until it is gone. */
  async down(): Promise<void> {
    const pid = this.pid;
    if (pid === null) return;
    try {
      process.kill(pid, "SIGTERM");
    } catch {
      // Already gone.
    }
    await waitFor("the private dockerd to exit", () => existsSync(`/proc/${pid}`), (alive) => !alive, { timeoutMs: 60_000 });
    this.pid = null;
  }

  docker(args: string[]): ReturnType<typeof run> {
    return run(["docker", ...args], { check: false, env: { ...process.env, DOCKER_HOST: this.host } });
  }

  /** Every container of `project`, from the engine's API. */
  async containersOf(project: string): Promise<Container[]> {
    const filters = encodeURIComponent(JSON.stringify({ label: [`com.docker.compose.project=${project}`] }));
    const res = await fetch(`http://docker/containers/json?all=1&filters=${filters}`, {
      unix: this.socket,
      signal: AbortSignal.timeout(10_000),
    } as RequestInit);
    if (!res.ok) throw new Error(`Cannot list containers: the engine answered ${res.status}`);
    const body = (await res.json()) as Array<{ Id: string; State: string; Labels: Record<string, string> | null }>;
    return body.map((c) => ({ id: c.Id, state: c.State, service: c.Labels?.["com.docker.compose.service"] ?? "" }));
  }

  async versionOf(id: string): Promise<string | undefined> {
    const r = await this.docker(["inspect", "--type", "container", "--format", "{{json .Config.Env}}", id]);
    return (JSON.parse(r.stdout) as string[]).find((e) => e.startsWith("VERSION="))?.slice("VERSION=".length);
  }

  /** Removes every container and stops the engine. */
  async destroy(): Promise<void> {
    if (this.pid !== null) {
      const ids = (await this.docker(["ps", "--all", "--quiet"])).stdout.split("\n").filter(Boolean);
      if (ids.length > 0) await this.docker(["rm", "--force", ...ids]);
    }
    await this.down();
  }
}

/** A private engine holding the test image, stopped and removed at cleanup; and a PATH whose `docker` talks to it. */
async function privateEngine(env: Env): Promise<{ engine: PrivateEngine; path: string }> {
  const root = await env.tempDir(0o700);
  const engine = await PrivateEngine.start(root);
  env.defer(async () => {
    await engine.destroy();
    // Its overlay mounts are gone with it; whatever is left goes with the temp dir.
    await run(["sh", "-c", `grep -o '${root}[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l`], { check: false });
  });
  const saved = await run(["sh", "-c", `docker save '${IMAGE}' | DOCKER_HOST='${engine.host}' docker load --quiet`]);
  expect(saved.stdout).toContain(IMAGE);
  const realDocker = Bun.which("docker");
  if (!realDocker) throw new Error("Cannot find docker on PATH");
  const wrap = join(root, "bin");
  await mkdir(wrap);
  await writeFile(join(wrap, "docker"), `#!/bin/sh\nDOCKER_HOST='${engine.host}' exec ${realDocker} "$@"\n`, { mode: 0o755 });
  return { engine, path: `${wrap}:${process.env["PATH"] ?? "/usr/bin:/bin"}` };
}

describe("the Docker daemon stopped mid-deploy", () => {
  test("the Docker daemon stopped in the middle of a deploy and started again: pgod converges with one container", async () => {
    await scenario("docker restart", async (env) => {
      const { engine, path } = await privateEngine(env);
      const s = await serve(env, "dockerd", {
        env: { ...process.env, DOCKER_HOST: engine.host, PATH: path },
        running: async (project) =>
          (await waitFor("one running container", () => engine.containersOf(project), (cs) => cs.length === 1 && cs[0]!.state === "running"))[0]!,
      });
      const { name, pg } = s;
      expect(await engine.versionOf(s.first.id)).toBe("1");

      const since = pg.log().length;
      const v2 = await s.repo.commit({ "compose.yaml": version(2) }, "version 2");
      await pg.waitForLog(composeExec(name, "up"), { since });
      await engine.down();
      // pgod notices: the deploy or the next cycle fails while the engine is away.
      await pg.waitForLog(new RegExp(`error msg="cycle failed" service=${name} `), { since, timeoutMs: 60_000 });
      expect(pg.exitCode).toBeNull();
      expect((await statusOf(s))["last error"]).not.toBe("none");

      await engine.up();
      const [c] = await waitFor(
        "exactly one running container of version 2",
        async () => {
          const cs = await engine.containersOf(name);
          return cs.length === 1 && cs[0]!.state === "running" ? [{ ...cs[0]!, v: await engine.versionOf(cs[0]!.id) }] : cs;
        },
        (cs) => cs.length === 1 && "v" in cs[0]! && cs[0].v === "2",
        { timeoutMs: 90_000 },
      );
      await pg.waitForLog(new RegExp(`msg=deployed service=${name} commit=${v2.slice(0, 12)} `), { since });
      const st = await statusOf(s);
      expect({ commit: st["commit"], lastError: st["last error"], result: st["last result"] }).toEqual({
        commit: v2, lastError: "none", result: "deployed",
      });
      // One more cycle: nothing new is started, no second container appears.
      await pg.waitForLog(/msg=exec argv="git ls-remote/, { since: pg.log().length });
      expect((await engine.containersOf(name)).map((x) => x.id)).toEqual([c!.id]);
    });
  });

  test("the machine's engine keeps its docker0 bridge and still runs a container on it", async () => {
    // A private engine was started and stopped twice above, and removed.
    expect({ docker0AtStart, docker0Now: await hasDocker0() }).toEqual({ docker0AtStart: true, docker0Now: true });
    const r = await run(["docker", "run", "--rm", "--pull", "never", IMAGE, "true"], { check: false });
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: "" });
  });
});
