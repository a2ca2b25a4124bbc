/**
 * Hostile repositories against the compose policy, with the real Docker engine: one pgod runs a
 * victim project (root, trusted) beside a non-root service per attack class, and a good
 * real-world compose file. Every case asserts the effect: the attacker's containers never exist,
 * the victim's volume keeps its data, nothing joins the shared network, no log reaches the
 * listener. Run `bash scripts/build.sh` first.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { Env, Pgod, ServiceSpec } from "./harness.ts";
import {
  chownTree, containersOf, Env as EnvClass, IMAGE, PGOD, preflight, run, runningOf, sweepRun, uniqueName, waitFor, waitRunning,
} from "./harness.ts";

const HEAD = `    image: ${IMAGE}\n    pull_policy: never\n    stop_signal: SIGKILL\n`;
/** A command that leaves evidence wherever the attack would reach, then serves. */
const evil = (path: string): string => `    command: ["/bin/sh", "-c", "echo pwned > ${path}; exec /bin/httpd -f -p 8080"]\n`;

let env: Env;
let pg: Pgod & { dir: string };
let udp: { port: number; close(): void } | undefined;
let datagrams = 0;
const names = {
  x: uniqueName("hx"),
  ext: uniqueName("hext"),
  named: uniqueName("hnam"),
  kfs: uniqueName("hkfs"),
  alias: uniqueName("hali"),
  cname: uniqueName("hcn"),
  envz: uniqueName("henv"),
  log: uniqueName("hlog"),
  rw: uniqueName("hrw"),
  kfs2: uniqueName("hkfs2"),
  join: uniqueName("hjoin"),
  build: uniqueName("hbld"),
  res: uniqueName("hres"),
  envlink: uniqueName("helk"),
  unknown: uniqueName("hunk"),
  good: uniqueName("hgood"),
};
/** The victim: with "x" configured as well, x's volume "vic_data" would be the victim's volume "data". */
const vic = `${names.x}_vic`;
const victimVolume = `${vic}_data`;
const net = uniqueName("hnet");

/** The files of each attacking repository. */
function attacks(port: number): Record<Exclude<keyof typeof names, "good">, Record<string, string>> {
  return {
    x: { "compose.yaml": `services:\n  web:\n${HEAD}    network_mode: none\n${evil("/d/pwned")}    volumes: ["vic_data:/d"]\nvolumes:\n  vic_data: {}\n` },
    ext: { "compose.yaml": `services:\n  web:\n${HEAD}    network_mode: none\n${evil("/d/pwned")}    volumes: ["stolen:/d"]\nvolumes:\n  stolen:\n    external: true\n    name: ${victimVolume}\n` },
    named: { "compose.yaml": `services:\n  web:\n${HEAD}    network_mode: none\n${evil("/d/pwned")}    volumes: ["stolen:/d"]\nvolumes:\n  stolen:\n    name: ${victimVolume}\n` },
    kfs: {
      "compose.yaml": `services:\n  web:\n${HEAD}    network_mode: none\n${evil("/hostproc/sysrq-trigger")}    volumes: ["proc:/hostproc", "ovl:/ovl"]\n` +
        `volumes:\n  proc:\n    driver_opts: {type: proc, device: proc}\n  ovl:\n    driver_opts: {type: overlay, device: overlay, o: "lowerdir=/etc,upperdir=/tmp/u,workdir=/tmp/w"}\n`,
    },
    alias: {
      "compose.yaml": `services:\n  web:\n${HEAD}${evil("/tmp/x")}    networks:\n      shared:\n        aliases: ["${vic}-web-1", "web"]\n` +
        `networks:\n  shared:\n    external: true\n    name: ${net}\n`,
    },
    cname: {
      "compose.yaml": `services:\n  web:\n${HEAD}    network_mode: none\n  side:\n${HEAD}    network_mode: none\n    profiles: [never]\n    container_name: ${vic}-db-1\n`,
    },
    envz: { "compose.yaml": `services:\n  web:\n${HEAD}    network_mode: none\n    env_file: /dev/zero\n` },
    log: {
      "compose.yaml": `services:\n  web:\n${HEAD}    network_mode: none\n    command: ["/bin/sh", "-c", "while true; do echo pwned; sleep 1; done"]\n` +
        `    logging:\n      driver: syslog\n      options: {syslog-address: "udp://127.0.0.1:${port}"}\n`,
    },
    rw: { "compose.yaml": `services:\n  web:\n${HEAD}    network_mode: none\n${evil("/repo/.git/hooks/post-checkout")}    volumes: [".:/repo"]\n` },
    kfs2: {
      "compose.yaml": `services:\n  web:\n${HEAD}    network_mode: none\n${evil("/sys/x")}    volumes: ["sysfs:/s", "devs:/dv", "share:/n"]\n` +
        `volumes:\n  sysfs:\n    driver_opts: {type: sysfs, device: sysfs}\n  devs:\n    driver_opts: {type: devtmpfs, device: devtmpfs}\n` +
        `  share:\n    driver_opts: {type: nfs, device: ":/export", o: "addr=127.0.0.1"}\n`,
    },
    join: {
      // The victim's running container, joined by name: its network, PID and IPC namespaces and its volumes.
      "compose.yaml": `services:\n  net:\n${HEAD}    network_mode: "container:${vic}-web-1"\n  pid:\n${HEAD}    network_mode: none\n    pid: "container:${vic}-web-1"\n` +
        `  ipc:\n${HEAD}    network_mode: none\n    ipc: "container:${vic}-web-1"\n  from:\n${HEAD}    network_mode: none\n${evil("/d/pwned")}    volumes_from: ["container:${vic}-web-1"]\n`,
    },
    build: {
      "compose.yaml": `services:\n  web:\n    build: {context: ., network: host}\n    network_mode: none\n`,
      Dockerfile: `FROM ${IMAGE}\nRUN echo pwned > /pwned\n`,
    },
    res: {
      "compose.yaml": `services:\n  web:\n${HEAD}    network_mode: none\n    oom_score_adj: -1000\n    pids_limit: -1\n  cg:\n${HEAD}    network_mode: none\n    cgroup_parent: /\n`,
    },
    envlink: { "compose.yaml": `services:\n  web:\n${HEAD}    network_mode: none\n    environment:\n      SECRET: "\${ROOT_HASH:-none}"\n` },
    unknown: { "compose.yaml": `services:\n  web:\n${HEAD}    network_mode: none\n    storage_opt: {size: 1G}\n    blkio_config: {weight: 10}\n` },
  };
}

/** A real-world file: healthcheck, named volume, expose, read-only checkout bind, a secret from the repository, tmpfs, an allow-listed network. */
const GOOD = {
  "compose.yaml": `services:
  web:
${HEAD}    command: ["/bin/httpd", "-f", "-p", "8080", "-h", "/srv"]
    expose: ["8080"]
    env_file: [app.env]
    read_only: true
    tmpfs: [/tmp]
    security_opt: ["no-new-privileges:true"]
    healthcheck:
      test: ["CMD-SHELL", "test -f /run/secrets/token && test -f /srv/index.html && test \\"$$MODE\\" = live"]
      interval: 1s
      timeout: 2s
      retries: 30
    volumes:
      - ./site:/srv:ro
      - cache:/cache
    secrets: [token]
    logging: {driver: json-file, options: {max-size: 1m}}
    deploy: {resources: {limits: {memory: 64m, pids: 64}}}
    networks: [default, shared]
volumes:
  cache: {}
secrets:
  token: {file: ./secrets/token}
networks:
  shared:
    external: true
    name: ${net}
`,
  "app.env": "MODE=live\n",
  "site/index.html": "good\n",
  "secrets/token": "t0ken\n",
};

const VICTIM = {
  "compose.yaml": `services:\n  web:\n${HEAD}    network_mode: none\n    command: ["/bin/sh", "-c", "echo victim > /d/marker; exec /bin/httpd -f -p 8080"]\n    volumes: ["data:/d"]\nvolumes:\n  data: {}\n`,
};

/** The files in the victim's volume and the marker's text, read by a throwaway container. */
async function victimData(): Promise<string> {
  const r = await run(["docker", "run", "--rm", "--network", "none", "-v", `${victimVolume}:/d`, IMAGE, "/bin/sh", "-c", "ls -A /d; cat /d/marker"]);
  return r.stdout;
}

beforeAll(async () => {
  await preflight([PGOD], [IMAGE]);
  env = await EnvClass.create();
  udp = await Bun.udpSocket({ hostname: "127.0.0.1", port: 0, socket: { data: () => void datagrams++ } });
  await run(["docker", "network", "create", net]);
  const user = await env.user();
  const victim = await env.repo(VICTIM);
  const specs: ServiceSpec[] = [{ name: vic, repository: victim.bare }];
  for (const [key, files] of [...Object.entries(attacks(udp.port)), ["good", GOOD] as const]) {
    const repo = await env.repo(files);
    if (key === "envlink") {
      await run(["ln", "-s", "/etc/shadow", join(repo.work, ".env")]);
      await repo.commit({}, "a .env that is a symlink out of the repository");
    }
    await chownTree(repo.bare, user.uid, user.gid);
    specs.push({ name: names[key as keyof typeof names], user: user.name, repository: repo.bare, extra: `networks = ["${net}"]\n` });
  }
  pg = await env.pgod(specs);
  // The victim runs and has written its marker before the attackers are judged.
  await waitRunning(vic, { timeoutMs: 120_000 });
  await waitFor("the victim's marker", victimData, (s) => s.includes("victim"), { timeoutMs: 60_000 });
}, 180_000);

afterAll(async () => {
  udp?.close();
  await env?.cleanup();
  const projects = [vic, ...Object.values(names)];
  const vols = await run(["docker", "volume", "ls", "--quiet"], { check: false });
  const ours = vols.stdout.split("\n").filter((v) => projects.some((p) => v.startsWith(`${p}_`)));
  if (ours.length > 0) await run(["docker", "volume", "rm", "--force", ...ours], { check: false });
  await run(["docker", "network", "rm", net], { check: false });
  await sweepRun();
}, 120_000);

/** Waits for pgod to refuse `name`'s compose file and returns the refusal's log line. */
async function refusal(name: string): Promise<string> {
  const [line] = await pg.waitForLog(new RegExp(`msg="compose file refused, keeping what runs" service=${name} `), { timeoutMs: 180_000 });
  return line!;
}

describe("hostile repositories of a non-root service, with a real engine", () => {
  test("a good real-world compose file beside them deploys and turns healthy", async () => {
    const c = await waitRunning(names.good, { timeoutMs: 180_000 });
    const health = await waitFor("a healthy container", async () => (await run(["docker", "inspect", "--format", "{{.State.Health.Status}}", c.id])).stdout.trim(), (h) => h === "healthy", { timeoutMs: 60_000 });
    expect(health).toBe("healthy");
  }, 240_000);

  test("a project named like another plus a suffix cannot take the other's volume (x's vic_data is x_vic's data)", async () => {
    expect(await refusal(names.x)).toContain("(rule name_collision)");
    expect(await containersOf(names.x)).toEqual([]);
    expect(await victimData()).toBe("marker\nvictim\n");
  }, 240_000);

  test("an external volume or a volume name: of another project is refused and the victim's data is untouched", async () => {
    expect(await refusal(names.ext)).toContain("(rule volume_external)");
    expect(await refusal(names.named)).toContain("(rule volume_name)");
    expect(await containersOf(names.ext)).toEqual([]);
    expect(await containersOf(names.named)).toEqual([]);
    expect(await victimData()).toBe("marker\nvictim\n");
  }, 240_000);

  test("volumes that mount proc or an overlay of host directories are never created or mounted", async () => {
    expect(await refusal(names.kfs)).toContain("(rule volume_driver_opts)");
    expect(await containersOf(names.kfs)).toEqual([]);
    const vols = await run(["docker", "volume", "ls", "--quiet", "--filter", `name=${names.kfs}`]);
    expect(vols.stdout.trim()).toBe("");
  }, 240_000);

  test("an alias on the shared network that would steal the victim's traffic is refused and nothing of it joins the network", async () => {
    expect(await refusal(names.alias)).toContain("(rule alias_outside)");
    expect(await containersOf(names.alias)).toEqual([]);
    // Only the good service is on the shared network.
    const inspect = await run(["docker", "network", "inspect", "--format", "{{range .Containers}}{{.Name}} {{end}}", net]);
    expect(inspect.stdout.trim().split(" ").filter(Boolean).every((n) => n.startsWith(`${names.good}-`))).toBe(true);
  }, 240_000);

  test("a container_name of another project, even in a profile that never starts, is refused and never taken", async () => {
    expect(await refusal(names.cname)).toContain("(rule container_name)");
    expect(await containersOf(names.cname)).toEqual([]);
    const taken = await run(["docker", "ps", "--all", "--quiet", "--filter", `name=^/${vic}-db-1$`]);
    expect(taken.stdout.trim()).toBe("");
  }, 240_000);

  test("env_file /dev/zero is refused before docker compose reads it", async () => {
    const line = await refusal(names.envz);
    expect(line).toContain('env_file \\"/dev/zero\\" is outside the repository');
    expect(await containersOf(names.envz)).toEqual([]);
  }, 240_000);

  test("a logging driver that sends to a host address is refused and nothing reaches that address", async () => {
    expect(await refusal(names.log)).toContain("(rule logging_driver)");
    expect(await containersOf(names.log)).toEqual([]);
    expect(datagrams).toBe(0);
  }, 240_000);

  test("a writable bind of the checkout is refused and no hook is written into it", async () => {
    expect(await refusal(names.rw)).toContain("(rule checkout_bind_rw)");
    expect(await containersOf(names.rw)).toEqual([]);
    expect(existsSync(join(pg.dir, names.rw, ".git", "hooks", "post-checkout"))).toBe(false);
  }, 240_000);

  test("volumes that mount sysfs, devtmpfs or an NFS share are never created or mounted", async () => {
    expect(await refusal(names.kfs2)).toContain("(rule volume_driver_opts)");
    expect(await containersOf(names.kfs2)).toEqual([]);
    expect((await run(["docker", "volume", "ls", "--quiet", "--filter", `name=${names.kfs2}`])).stdout.trim()).toBe("");
  }, 240_000);

  test("joining the victim's running container by name (network, pid, ipc, volumes_from) is refused", async () => {
    const line = await refusal(names.join);
    for (const rule of ["network_join", "pid_join", "ipc_shared", "volumes_from"]) expect(line).toContain(`(rule ${rule})`);
    expect(await containersOf(names.join)).toEqual([]);
    expect(await victimData()).toBe("marker\nvictim\n");
    expect((await runningOf(vic)).length).toBe(1);
  }, 240_000);

  test("a build on the host network is refused and no image is built", async () => {
    expect(await refusal(names.build)).toContain("(rule build_network)");
    expect(await containersOf(names.build)).toEqual([]);
    expect((await run(["docker", "image", "ls", "--quiet", `${names.build}-web`])).stdout.trim()).toBe("");
  }, 240_000);

  test("a negative oom_score_adj, unlimited pids and another cgroup parent are refused", async () => {
    const line = await refusal(names.res);
    for (const rule of ["oom_score_adj", "pids_limit", "cgroup_parent"]) expect(line).toContain(`(rule ${rule})`);
    expect(await containersOf(names.res)).toEqual([]);
  }, 240_000);

  test("a .env that is a symlink to /etc/shadow is refused before docker compose reads it", async () => {
    expect(await refusal(names.envlink)).toContain('Cannot use env file \\".env\\": it leads out of the repository through a symlink');
    expect(await containersOf(names.envlink)).toEqual([]);
  }, 240_000);

  test("keys that are not on the allow-list are refused with their paths", async () => {
    const line = await refusal(names.unknown);
    expect(line).toContain('\\"storage_opt\\" is refused (rule unknown_key)');
    expect(line).toContain('\\"blkio_config\\" is refused (rule unknown_key)');
    expect(await containersOf(names.unknown)).toEqual([]);
  }, 240_000);
});
