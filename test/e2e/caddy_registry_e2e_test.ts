/**
 * pgod's Caddy import and reload, private registries and `env` against the real Docker engine: a
 * Caddy container made from Debian's binary (`pgo-caddy:1`, built by scripts/deps.sh) proxying to
 * busybox httpd services, Debian's `docker-registry` with htpasswd auth on 127.0.0.1, and a
 * compose file that interpolates and passes through a variable of `env`. Tests share no state and
 * run concurrently. Run `bash scripts/deps.sh` and `bash scripts/build.sh` first.
 */
import { gitDirOf } from "../../src/git.ts";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { closeSync, existsSync, openSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  configText, containersOf, IMAGE, metricsAddress, Pgod, PGOD, preflight, randomId, removeProject, run, scenario, sweepRun,
  uniqueName, waitFor, waitRunning,
} from "./harness.ts";
import { freePort } from "../kit/process.ts";
import type { Env, ServiceSpec } from "./harness.ts";

/** The local Caddy image that scripts/deps.sh builds. */
const CADDY_IMAGE = "pgo-caddy:1";

/** The reload command of the Caddy service: the compose service in its repository is `caddy`. */
const RELOAD = "localhost:caddy//exec caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile";

beforeAll(() => preflight([PGOD], [IMAGE, CADDY_IMAGE]));
afterAll(sweepRun);

/** The body of `GET /` on 127.0.0.1:`port` with `Host: host`, or the error as text. */
async function getPage(port: number, host: string): Promise<string> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/`, { headers: { Host: host }, signal: AbortSignal.timeout(5_000) });
    return `${res.status} ${await res.text()}`;
  } catch (e) {
    return `error: ${e instanceof Error ? e.message : String(e)}`;
  }
}

/** Starts pgod again on the config and dirs of `env`'s first pgod, as systemd would after exit 2. */
function restartPgod(env: Env, tag: string): Pgod {
  const pg = Pgod.start({ ...env.paths(), logFile: join(env.root, `${tag}.log`) });
  env.pgods.push(pg);
  return pg;
}

/** A compose file with one busybox httpd service `web` on external network `net`, serving `page`. */
function siteCompose(net: string, page: string): string {
  const script = `mkdir -p /tmp/www && echo '${page}' > /tmp/www/index.html && exec /bin/httpd -f -p 8080 -h /tmp/www`;
  return `services:
  web:
    image: ${IMAGE}
    pull_policy: never
    stop_signal: SIGKILL
    command: ${JSON.stringify(["/bin/sh", "-c", script])}
    networks: [shared]
networks:
  shared:
    external: true
    name: ${net}
`;
}

/** The Caddy repository: compose service `caddy` publishing `port`, creating network `net`, with /etc/caddy from `./caddy`. */
function caddyRepoFiles(net: string, port: number): Record<string, string> {
  return {
    "compose.yaml": `services:
  caddy:
    image: ${CADDY_IMAGE}
    pull_policy: never
    ports: ["127.0.0.1:${port}:80"]
    volumes: ["./caddy:/etc/caddy:ro"]
    networks: [shared]
networks:
  shared:
    name: ${net}
`,
    "caddy/Caddyfile": `{
	admin localhost:2019
	auto_https off
}

import /etc/caddy/Caddyfile-import
`,
  };
}

describe("Caddy, registries and env with a real Docker engine", () => {
  test.concurrent("a URL in the config is proxied by Caddy, and a URL added later answers after pgod restarts", async () => {
    await scenario("caddy", async (env) => {
      const net = uniqueName("net");
      const caddy = uniqueName("caddy");
      const siteA = uniqueName("site-a");
      const siteB = uniqueName("site-b");
      const port = freePort();
      // The shared network goes once no project uses it any more.
      env.defer(async () => {
        await Promise.all([siteA, siteB, caddy].map((p) => removeProject(p)));
        await run(["docker", "network", "rm", net], { check: false });
      });
      const caddyRepo = await env.repo(caddyRepoFiles(net, port));
      const aRepo = await env.repo({ "compose.yaml": siteCompose(net, `page of ${siteA}`) });
      const bRepo = await env.repo({ "compose.yaml": siteCompose(net, `page of ${siteB}`) });
      const networks = `networks = ["${net}"]\n`;
      const services = (withB: boolean): ServiceSpec[] => [
        {
          name: caddy, repository: caddyRepo.bare,
          extra: `import = "caddy/Caddyfile-import"\nreload = "${RELOAD}"\n${networks}`,
        },
        // The container names `<project>-web-1` resolve on the shared network.
        { name: siteA, repository: aRepo.bare, extra: `urls = { "http://site-a.test" = "${siteA}-web-1:8080" }\n${networks}` },
        {
          name: siteB, repository: bRepo.bare,
          extra: `${withB ? `urls = { "http://site-b.test" = "${siteB}-web-1:8080" }\n` : ""}${networks}`,
        },
      ];
      const first = await env.pgod(services(false));
      const importFile = join(first.dir, caddy, "caddy", "Caddyfile-import");

      await waitFor("site-a.test through Caddy", () => getPage(port, "site-a.test"), (p) => p === `200 page of ${siteA}\n`, { timeoutMs: 60_000 });
      expect(await getPage(port, "site-b.test")).not.toContain(siteB);
      expect(await readFile(importFile, "utf8")).toContain(`http://site-a.test {\n\treverse_proxy ${siteA}-web-1:8080\n}`);
      // pgod's own file stays out of git's way (DECISIONS.md #7).
      expect(await readFile(join(gitDirOf(join(first.dir, caddy)), "info", "exclude"), "utf8")).toContain("/caddy/Caddyfile-import");
      const [proxy] = await waitFor("one running Caddy container", () => containersOf(caddy), (cs) => cs.length === 1 && cs[0]!.state === "running");

      await writeFile(first.config, configText(services(true)));
      const code = await first.exitedWithin(20_000);
      expect(code).toBe(2);
      // Exiting for a restart leaves the proxy serving.
      expect(await getPage(port, "site-a.test")).toBe(`200 page of ${siteA}\n`);

      const second = restartPgod(env, "pgod-restarted");
      await second.waitForLog(new RegExp(`msg="wrote the Caddy import file" service=${caddy} `));
      await waitFor("site-b.test through Caddy", () => getPage(port, "site-b.test"), (p) => p === `200 page of ${siteB}\n`, { timeoutMs: 60_000 });
      expect(await getPage(port, "site-a.test")).toBe(`200 page of ${siteA}\n`);
      expect(await readFile(importFile, "utf8")).toContain(`http://site-b.test {\n\treverse_proxy ${siteB}-web-1:8080\n}`);
      // The same Caddy container serves the new site: the reload did it, not a new container.
      await second.waitForLog(new RegExp(`msg="reloaded the proxy" service=${caddy} container=caddy`));
      expect((await containersOf(caddy)).map((c) => [c.id, c.state])).toEqual([[proxy!.id, "running"]]);
      expect(second.lines(new RegExp(`msg=exec argv="docker compose --project-name ${caddy} --file compose.yaml exec -T caddy caddy reload `)).length)
        .toBeGreaterThanOrEqual(1);
    });
  });

  test.concurrent("an image in a private registry is pulled with the right token, a wrong token fails clearly, and no token leaks", async () => {
    await scenario("registry", async (env) => {
      const good = uniqueName("reg-good");
      const bad = uniqueName("reg-bad");
      const user = `u${randomId(6)}`;
      const token = `tok${randomId(24)}`;
      const wrong = `bad${randomId(24)}`;
      const port = freePort();
      const host = `127.0.0.1:${port}`;

      // The registry: filesystem storage and htpasswd auth in a private temp dir.
      const regDir = await env.tempDir(0o700);
      const htpasswd = await run(["htpasswd", "-Bbn", user, token]);
      await writeFile(join(regDir, "htpasswd"), htpasswd.stdout);
      await writeFile(join(regDir, "config.yml"), `version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: ${join(regDir, "data")}
http:
  addr: ${host}
auth:
  htpasswd:
    realm: pgo-e2e
    path: ${join(regDir, "htpasswd")}
`);
      const regLog = openSync(join(regDir, "registry.log"), "a");
      const registry = Bun.spawn(["docker-registry", "serve", join(regDir, "config.yml")], {
        cwd: "/", env: process.env, stdin: "ignore", stdout: regLog, stderr: regLog,
      });
      closeSync(regLog);
      env.defer(async () => {
        registry.kill("SIGTERM");
        await Promise.race([registry.exited, Bun.sleep(5_000)]);
        registry.kill("SIGKILL");
        await registry.exited;
      });
      await waitFor(`the registry on ${host} asking for credentials`, async () => {
        if (registry.exitCode !== null) throw new Error(`docker-registry exited with ${registry.exitCode}`);
        return (await fetch(`http://${host}/v2/`, { signal: AbortSignal.timeout(2_000) })).status;
      }, (s) => s === 401, { timeoutMs: 15_000 });

      // Push two tags of the local image, then drop the local tags so that pgod must pull.
      const tag = randomId(8);
      const goodImage = `${host}/pgo/busybox:good-${tag}`;
      const badImage = `${host}/pgo/busybox:bad-${tag}`;
      const pushEnv = { ...process.env, DOCKER_CONFIG: await env.tempDir(0o700) };
      await run(["docker", "login", "--username", user, "--password-stdin", host], { stdin: token, env: pushEnv });
      env.defer(async () => void (await run(["docker", "image", "rm", goodImage, badImage], { check: false })));
      for (const image of [goodImage, badImage]) {
        await run(["docker", "tag", IMAGE, image]);
        await run(["docker", "push", "--quiet", image], { env: pushEnv });
        await run(["docker", "image", "rm", image]);
        expect((await run(["docker", "image", "inspect", image], { check: false })).code).not.toBe(0);
      }
      await run(["docker", "logout", host], { env: pushEnv });

      const compose = (image: string): string => `services:
  web:
    image: ${image}
    stop_signal: SIGKILL
    command: ["/bin/httpd", "-f", "-p", "8080"]
    network_mode: none
`;
      const goodRepo = await env.repo({ "compose.yaml": compose(goodImage) });
      const badRepo = await env.repo({ "compose.yaml": compose(badImage) });
      const pg = await env.pgod([
        { name: good, repository: goodRepo.bare, extra: `registries = ["${user}:${token}@${host}"]\n` },
        { name: bad, repository: badRepo.bare, extra: `registries = ["${user}:${wrong}@${host}"]\n` },
      ]);

      // Sample every process's argv while pgod logs in, pulls and fails.
      const samples: string[] = [];
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          samples.push((await run(["ps", "-eww", "-o", "args"])).stdout);
          await Bun.sleep(50);
        }
      })();
      try {
        const c = await waitRunning(good, { timeoutMs: 60_000 });
        expect((await run(["docker", "inspect", "--type", "container", "--format", "{{.Config.Image}}", c.id])).stdout.trim()).toBe(goodImage);
        await pg.waitForLog(new RegExp(`msg=deployed service=${good} `));
        const hostRe = host.replaceAll(".", "\\.");
        await pg.waitForLog(new RegExp(`error msg="cycle failed" service=${bad} .*Cannot log in to registry \\\\?"${hostRe}\\\\?"`), { count: 2 });
      } finally {
        sampling = false;
        await sampler;
      }
      expect(samples.length).toBeGreaterThan(10);
      // The samples caught pgod's docker children at work, so a token in an argv would show.
      expect(samples.some((s) => s.includes(`--project-name ${good}`) || s.includes(`docker login --username ${user}`))).toBe(true);

      // No token in any process's argv, in the log (with --debug) or in the metrics.
      const metrics = await (await fetch(`http://${await metricsAddress(pg)}/metrics`)).text();
      for (const secret of [token, wrong]) {
        expect(pg.log()).not.toContain(secret);
        expect(metrics).not.toContain(secret);
        expect(samples.flatMap((s) => s.split("\n").filter((l) => l.includes(secret)))).toEqual([]);
      }

      // The image came from the registry; the wrong token brought up nothing.
      expect((await run(["docker", "image", "inspect", goodImage], { check: false })).code).toBe(0);
      expect((await run(["docker", "image", "inspect", badImage], { check: false })).code).not.toBe(0);
      expect(await containersOf(bad)).toEqual([]);

      // Logged out afterwards: the service's own DOCKER_CONFIG holds no credentials for the registry.
      for (const name of [good, bad]) {
        const file = join(pg.dir, ".docker", name, "config.json");
        if (name === good) expect(existsSync(file)).toBe(true);
        const text = existsSync(file) ? await readFile(file, "utf8") : "{}";
        const auths = (JSON.parse(text) as { auths?: Record<string, unknown> }).auths ?? {};
        expect(Object.keys(auths)).not.toContain(host);
        expect(text).not.toContain(Buffer.from(`${user}:${token}`).toString("base64"));
        expect(text).not.toContain(token);
      }

      // The logins are counted, under bounded labels.
      expect(metrics).toMatch(new RegExp(`pgo_command_count\\{service="${good}",cmd="docker",subcmd="login"\\} [1-9]`));
      expect(metrics).toMatch(new RegExp(`pgo_command_error_count\\{service="${bad}",cmd="docker",subcmd="login"\\} [1-9]`));

      // Logged in with the token on stdin, and out of exactly that registry, in the service's checkout.
      expect(pg.lines(new RegExp(`msg=exec argv="docker login --username ${user} --password-stdin ${host}" cwd=${join(pg.dir, good)} `)).length)
        .toBeGreaterThanOrEqual(1);
      expect(pg.lines(new RegExp(`msg=exec argv="docker logout ${host}" cwd=${join(pg.dir, good)} `)).length).toBeGreaterThanOrEqual(1);
    });
  });

  test.concurrent("env reaches docker compose for interpolation and pass-through, and its value stays out of the log", async () => {
    await scenario("env", async (env) => {
      const name = uniqueName("env");
      const value = "hello-from-env";
      const repo = await env.repo({
        "compose.yaml": `services:
  web:
    image: ${IMAGE}
    pull_policy: never
    stop_signal: SIGKILL
    command: ["/bin/sh", "-c", "echo \${GREETING} > /tmp/greeting && exec /bin/httpd -f -p 8080"]
    environment: [GREETING]
    network_mode: none
`,
      });
      const pg = await env.pgod([{ name, repository: repo.bare, extra: `env = ["GREETING=${value}"]\n` }]);
      const c = await waitRunning(name);
      await pg.waitForLog(new RegExp(`msg=deployed service=${name} `));
      const seen = (await run(["docker", "inspect", "--type", "container", "--format", "{{json .Config}}", c.id])).stdout;
      const config = JSON.parse(seen) as { Env: string[] | null; Cmd: string[] | null };
      expect(config.Env).toContain(`GREETING=${value}`);
      expect(config.Cmd).toEqual(["/bin/sh", "-c", `echo ${value} > /tmp/greeting && exec /bin/httpd -f -p 8080`]);
      const greeting = await run(["docker", "exec", c.id, "cat", "/tmp/greeting"]);
      expect(greeting.stdout).toBe(`${value}\n`);
      // The name reaches compose's environment; the value never reaches the log.
      expect(pg.lines(new RegExp(`msg=exec argv="docker compose --project-name ${name} .* up .*env=\\S*\\bGREETING\\b`)).length)
        .toBeGreaterThanOrEqual(1);
      expect(pg.log()).not.toContain(value);
    });
  });
});
