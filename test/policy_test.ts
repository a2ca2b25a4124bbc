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
import { makeEngineNames } from "../src/engine_names.ts";
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
  /** More context: other configured projects, checkout_binds, logging_drivers, existing names. */
  ctx?: Partial<PolicyContext>;
  expect: string[];
}

const DATA_DIR = join(scratch, "data", "pol");
mkdirSync(DATA_DIR, { recursive: true });

/** Real-world compose files that must keep passing (each is also deployed in test/e2e/hostile_policy_e2e_test.ts's good case). */
const ALLOWED: Case[] = [
  {
    name: "a web app with a database: healthchecks, depends_on conditions, expose, named volumes, secrets and configs from the repository, tmpfs, read-only checkout binds, a writable data directory bind",
    files: {
      "compose.yaml": file(
        svc("web", [
          "    command: [\"/bin/httpd\", \"-f\", \"-p\", \"8080\"]",
          "    expose: [\"8080\"]",
          "    environment: {MODE: production}",
          "    env_file: [app.env]",
          "    user: \"1000:1000\"",
          "    read_only: true",
          "    init: true",
          "    restart: unless-stopped",
          "    stop_grace_period: 5s",
          "    tmpfs: [/run]",
          "    cap_drop: [ALL]",
          "    security_opt: [\"no-new-privileges:true\"]",
          "    healthcheck: {test: [\"CMD\", \"true\"], interval: 5s, timeout: 2s, retries: 3, start_period: 1s}",
          "    depends_on:\n      db: {condition: service_healthy}",
          "    volumes:",
          "      - ./static:/srv/static:ro",
          "      - type: bind\n        source: ./conf\n        target: /etc/app\n        read_only: true",
          "      - ${DATA}/uploads:/uploads",
          "      - cache:/cache",
          "      - scratch:/scratch",
          "      - type: tmpfs\n        target: /tmp\n        tmpfs: {size: 1000000}",
          "    secrets: [db_password]",
          "    configs: [{source: app, target: /etc/app.conf}]",
          "    logging: {driver: json-file, options: {max-size: 10m, max-file: \"3\"}}",
          "    mem_limit: 256m",
          "    ulimits: {nofile: {soft: 1024, hard: 4096}}",
          "    sysctls: {net.core.somaxconn: 1024}",
          "    oom_score_adj: 100",
          "    deploy: {resources: {limits: {memory: 256m, pids: 100}, reservations: {memory: 16m}}}",
          "    labels: {app: web}",
          "    hostname: web",
          "    x-note: extension keys are ignored",
          "",
        ].join("\n")) +
          svc("db", "    healthcheck: {test: \"true\"}\n    volumes: [\"dbdata:/var/lib/db\"]\n    profiles: [db]\n    scale: 1\n"),
        "volumes:\n  cache: {}\n  dbdata:\n    driver: local\n  scratch:\n    driver_opts: {type: tmpfs, device: tmpfs, o: \"size=64m,uid=1000,mode=0700\"}\n" +
          "secrets:\n  db_password: {file: ./secrets/db.txt}\nconfigs:\n  app: {file: ./conf/app.conf}\nx-defaults: {a: 1}\n",
      ),
      "app.env": "A=1\n",
      ".env": "B=2\n",
      "secrets/db.txt": "s3cret\n",
      "conf/app.conf": "x\n",
      "static/index.html": "hi\n",
    },
    env: { DATA: DATA_DIR },
    expect: [],
  },
  {
    name: "a site on an allow-listed external network, with an alias in its own namespace",
    files: {
      "compose.yaml": file(
        svc("web", "    networks:\n      proxy:\n        aliases: [pol-site]\n      default: {}\n"),
        "networks:\n  proxy:\n    external: true\n    name: reverse_proxy\n",
      ),
    },
    networks: ["reverse_proxy"],
    expect: [],
  },
  {
    name: "an image built from the checkout, with a Dockerfile in a subdirectory, a build secret from the repository and no network",
    files: {
      "compose.yaml": file(
        "  app:\n    build:\n      context: .\n      dockerfile: docker/Dockerfile\n      args: {V: \"1\"}\n      network: none\n      secrets: [token]\n      cache_from: [pol-app:cache]\n" +
          "    image: pol-app:1\n    pull_policy: build\n",
        "secrets:\n  token: {file: ./secrets/token}\n",
      ),
      "docker/Dockerfile": "FROM scratch\n",
      "secrets/token": "t\n",
    },
    expect: [],
  },
  {
    name: "services that share namespaces and volumes only with each other",
    files: {
      "compose.yaml": file(
        svc("db", "    container_name: pol-db\n    ipc: shareable\n".replace("    ipc: shareable\n", "")) +
          svc("a", "    network_mode: \"container:pol-db\"\n    pid: \"service:db\"\n    ipc: \"service:db\"\n") +
          svc("b", "    volumes_from: [\"db:ro\"]\n    links: [\"db:database\"]\n    network_mode: \"service:db\"\n") +
          svc("c", "    network_mode: \"container:pol-db-1\"\n    cgroup: private\n"),
      ),
    },
    expect: [],
  },
  {
    name: "a writable checkout bind and a syslog driver when the admin allows them",
    files: { "compose.yaml": file(svc("web", "    volumes: [\"./:/repo\"]\n    logging: {driver: syslog, options: {syslog-address: \"udp://127.0.0.1:514\"}}\n")) },
    ctx: { checkoutBinds: "rw", loggingDrivers: ["syslog"] },
    expect: [],
  },
  {
    name: "a project whose names start like another's, when the longer project is the one naming them",
    files: { "compose.yaml": file(svc("web"), "volumes:\n  data: {}\n") },
    ctx: { project: "pol_vic", projects: ["pol", "pol_vic", "pol-vic"] },
    expect: [],
  },
];

const REFUSED: Case[] = [
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
    files: { "compose.yaml": file(svc("web", "    volumes: [\"./root:/r:ro\"]\n")), root: { link: "/" } },
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
    name: "refuses a writable bind of the checkout or of a directory in it, and mount propagation",
    files: {
      "compose.yaml": file(svc("web", "    volumes:\n      - .:/repo\n      - ./.git:/g\n      - type: bind\n        source: ./data\n        target: /d\n        read_only: true\n        bind: {propagation: rshared}\n")),
    },
    expect: ["web:bind_options", "web:checkout_bind_rw", "web:checkout_bind_rw"],
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
    name: "refuses every security_opt but no-new-privileges",
    files: { "compose.yaml": file(svc("web", "    security_opt: [\"seccomp=unconfined\", \"no-new-privileges:true\", \"apparmor:unconfined\", \"label=level:s0\"]\n")) },
    expect: ["web:security_opt", "web:security_opt", "web:security_opt"],
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
    expect: [":network_not_allowed"],
  },
  {
    // Changed on purpose (DECISIONS #13): an empty allow-list used to allow every network.
    name: "refuses an external network when the allow-list is empty or absent",
    files: { "compose.yaml": file(svc("web", "    networks: [shared]\n"), "networks:\n  shared:\n    external: true\n") },
    networks: [],
    expect: [":network_not_allowed"],
  },
  {
    name: "refuses a network that takes another project's name without external",
    files: { "compose.yaml": file(svc("web", "    networks: [default]\n"), "networks:\n  default:\n    name: other_default\n") },
    networks: ["reverse_proxy"],
    expect: [":network_not_allowed"],
  },
  {
    name: "refuses macvlan networks, driver options and subnets of the project's own networks",
    files: {
      "compose.yaml": file(
        svc("web", "    networks: [lan, br, sub]\n"),
        "networks:\n  lan: {driver: macvlan, driver_opts: {parent: eth0}}\n  br:\n    driver_opts: {com.docker.network.bridge.name: docker0}\n  sub:\n    ipam: {config: [{subnet: 192.168.0.0/16}]}\n",
      ),
    },
    expect: [":network_driver", ":network_options", ":network_options", ":network_options"],
  },
  {
    name: "refuses an alias on a shared network that could take another service's traffic, and a fixed address there",
    files: {
      "compose.yaml": file(
        svc("web", "    networks:\n      proxy:\n        aliases: [victim-web-1, pol-ok, api]\n"),
        "networks:\n  proxy:\n    external: true\n    name: reverse_proxy\n",
      ),
    },
    networks: ["reverse_proxy"],
    ctx: { projects: ["pol", "victim"] },
    expect: ["web:alias_outside", "web:alias_outside"],
  },
  {
    name: "refuses a service named like another project's container on a shared network",
    files: {
      "compose.yaml": file(svc("victim-web-1", "    networks: [proxy]\n"), "networks:\n  proxy:\n    external: true\n    name: reverse_proxy\n"),
    },
    networks: ["reverse_proxy"],
    ctx: { projects: ["pol", "victim"] },
    expect: ["victim-web-1:alias_outside"],
  },
  {
    name: "refuses volumes_from a container, even its own, but allows one of its own services",
    files: { "compose.yaml": file(svc("web", "    volumes_from: [\"container:other\", \"container:pol-db-1\", \"db:ro\"]\n") + svc("db")) },
    expect: ["web:volumes_from", "web:volumes_from"],
  },
  {
    name: "refuses joins of another project's container, by exact name and by prefix",
    files: {
      "compose.yaml": file(
        svc("db", "    container_name: pol-db\n") + svc("a", "    network_mode: \"container:pol-db\"\n") +
          svc("b", "    network_mode: \"container:someone-else\"\n") + svc("c", "    network_mode: \"service:db\"\n") +
          svc("d", "    network_mode: \"container:polx-db-1\"\n") + svc("e", "    pid: \"container:pol-db-1x\"\n") +
          svc("f", "    ipc: \"container:pol-dbx\"\n"),
      ),
    },
    expect: ["b:network_join", "d:network_join", "e:pid_join", "f:ipc_shared"],
  },
  {
    name: "refuses labels that claim another compose project for a container, a volume or a network",
    files: {
      "compose.yaml": file(
        svc("web", "    labels: {com.docker.compose.project: victim, app: ok}\n    volumes: [\"data:/d\"]\n    networks: [net]\n"),
        "volumes:\n  data:\n    labels: {com.docker.compose.project: victim}\nnetworks:\n  net:\n    labels: [\"com.docker.compose.network=x\"]\n",
      ),
    },
    expect: [":compose_label", ":compose_label", "web:compose_label"],
  },
  {
    name: "refuses a container_name outside the project, in a profile that never starts too",
    files: { "compose.yaml": file(svc("web", "    container_name: victim-web-1\n") + svc("x", "    profiles: [never]\n    container_name: victim\n")) },
    expect: ["web:container_name", "x:container_name"],
  },
  {
    name: "refuses external_links and allows links to its own services",
    files: { "compose.yaml": file(svc("web", "    links: [\"db\", \"db:o\"]\n    external_links: [\"victim-web-1\"]\n") + svc("db")) },
    expect: ["web:links"],
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
    name: "refuses volumes that mount kernel filesystems, host paths, overlays or network shares through driver options",
    files: {
      "compose.yaml": file(
        svc("web", `    volumes: [${["proc", "sys", "dev", "ovl", "nfs", "cifs", "etc", "tmpbind"].map((v) => `"${v}:/${v}"`).join(", ")}]\n`),
        "volumes:\n" +
          "  proc: {driver_opts: {type: proc, device: proc}}\n" +
          "  sys: {driver_opts: {type: sysfs, device: sysfs}}\n" +
          "  dev: {driver_opts: {type: devtmpfs, device: devtmpfs}}\n" +
          "  ovl: {driver_opts: {type: overlay, device: overlay, o: \"lowerdir=/etc,upperdir=/tmp/u,workdir=/tmp/w\"}}\n" +
          "  nfs: {driver_opts: {type: nfs, device: \":/export\", o: \"addr=127.0.0.1\"}}\n" +
          "  cifs: {driver_opts: {type: cifs, device: //127.0.0.1/share}}\n" +
          "  etc: {driver_opts: {type: none, o: bind, device: /etc}}\n" +
          "  tmpbind: {driver_opts: {type: tmpfs, device: tmpfs, o: \"size=1m,bind\"}}\n",
      ),
    },
    expect: Array(8).fill(":volume_driver_opts"),
  },
  {
    name: "refuses an external volume, another project's volume by name, and a volume driver plugin",
    files: {
      "compose.yaml": file(
        svc("web", "    volumes: [\"ext:/a\", \"named:/b\", \"plug:/c\"]\n"),
        "volumes:\n  ext: {external: true, name: victim_data}\n  named: {name: victim_data}\n  plug: {driver: local-persist}\n",
      ),
    },
    expect: [":volume_driver", ":volume_external", ":volume_name"],
  },
  {
    name: "refuses a volume subpath and mount types other than bind, volume and tmpfs",
    files: {
      "compose.yaml": file(
        svc("web", "    volumes:\n      - type: volume\n        source: data\n        target: /d\n        volume: {subpath: x}\n      - type: npipe\n        source: /x\n        target: /y\n"),
        "volumes:\n  data: {}\n",
      ),
    },
    expect: ["web:mount_type", "web:volume_subpath"],
  },
  {
    name: "refuses a volume, network or container name that falls among a longer project's names",
    files: {
      "compose.yaml": file(
        svc("web", "    volumes: [\"vic_data:/d\"]\n    networks: [vic_net]\n") + svc("vic-db") + svc("c", "    container_name: pol-vic-db-2\n"),
        "volumes:\n  vic_data: {}\nnetworks:\n  vic_net: {}\n",
      ),
    },
    ctx: { projects: ["pol", "pol_vic", "pol-vic"] },
    expect: [":name_collision", ":name_collision", "c:name_collision", "vic-db:name_collision"],
  },
  {
    name: "refuses a volume or network that exists and belongs to another project, and allows its own",
    files: {
      "compose.yaml": file(svc("web", "    volumes: [\"data:/d\", \"mine:/m\"]\n    networks: [default, net]\n"), "volumes:\n  data: {}\n  mine: {}\nnetworks:\n  net: {}\n"),
    },
    ctx: {
      existing: {
        volumes: new Map([["pol_data", "victim"], ["pol_mine", "pol"]]),
        networks: new Map([["pol_net", ""], ["pol_default", "pol"]]),
      },
    },
    expect: [":network_in_use", ":volume_in_use"],
  },
  {
    name: "refuses a secret read from a file outside the checkout",
    files: { "compose.yaml": file(svc("web", "    secrets: [s]\n"), "secrets:\n  s:\n    file: /etc/hostname\n") },
    expect: [":file_outside"],
  },
  {
    name: "refuses builds on the host network, with a context, Dockerfile or secret outside the checkout, or privileged",
    files: {
      "compose.yaml": file(
        "  a:\n    build: {context: ., network: host}\n" +
          "  b:\n    build: {context: ..}\n" +
          "  c:\n    build: {context: ., dockerfile: ../Dockerfile}\n" +
          "  d:\n    build: {context: ., dockerfile: /etc/passwd}\n" +
          "  e:\n    build: {context: ., secrets: [hostkey]}\n" +
          "  f:\n    build: {context: ., privileged: true, entitlements: [security.insecure], ssh: [default]}\n" +
          "  g:\n    build: {context: ., tags: [\"victim-web:latest\"]}\n    image: victim-web\n",
        "secrets:\n  hostkey: {file: /etc/ssh/ssh_host_ed25519_key}\n",
      ),
      Dockerfile: "FROM scratch\n",
    },
    expect: [
      ":file_outside", "a:build_network", "b:build_context", "b:build_dockerfile", "c:build_dockerfile", "d:build_dockerfile",
      "f:build_privileged", "f:build_privileged", "f:build_ssh", "g:build_image", "g:build_image",
    ],
  },
  {
    name: "refuses logging drivers that send to addresses (syslog, gelf, fluentd, splunk) unless the admin allows them",
    files: {
      "compose.yaml": file(
        ["syslog", "gelf", "fluentd", "splunk"].map((d) => svc(d, `    logging: {driver: ${d}, options: {tag: x}}\n`)).join(""),
      ),
    },
    ctx: { loggingDrivers: ["splunk"] },
    expect: ["fluentd:logging_driver", "gelf:logging_driver", "syslog:logging_driver"],
  },
  {
    name: "refuses a negative oom_score_adj, unlimited pids, cgroup_parent, runtime, isolation and GPU reservations",
    files: {
      "compose.yaml": file(
        svc("web", "    oom_score_adj: -500\n    pids_limit: -1\n    cgroup_parent: /\n    runtime: runc\n    isolation: default\n") +
          svc("gpu", "    deploy:\n      resources:\n        reservations:\n          devices: [{driver: nvidia, count: all, capabilities: [gpu]}]\n"),
      ),
    },
    expect: ["gpu:devices", "web:cgroup_parent", "web:isolation", "web:oom_score_adj", "web:pids_limit", "web:runtime"],
  },
  {
    name: "refuses kernel sysctls, unbounded or unknown ulimits and extra_hosts to host-gateway",
    files: {
      "compose.yaml": file(svc("web", "    sysctls: {kernel.shm_rmid_forced: 1, net.ipv4.ip_forward: 1}\n    ulimits: {nofile: -1, rtprio: 99, nproc: 100}\n    extra_hosts: [\"host.docker.internal:host-gateway\", \"db:10.0.0.2\"]\n")),
    },
    expect: ["web:extra_hosts", "web:sysctls", "web:ulimits", "web:ulimits"],
  },
  {
    name: "refuses keys that are not on the allow-list, at every depth",
    files: {
      "compose.yaml": file(
        svc("web", "    storage_opt: {size: 1G}\n    blkio_config: {weight: 10}\n    develop: {watch: [{action: sync, path: ., target: /x}]}\n    deploy: {placement: {constraints: [a]}}\n    annotations: {a: b}\n"),
      ),
    },
    // deploy.placement is allowed (Swarm stacks): storage_opt, blkio_config and develop are not.
    expect: ["web:annotations", "web:unknown_key", "web:unknown_key", "web:unknown_key"],
  },
];

describe("evaluatePolicy() on the real `docker compose config` model", () => {
  for (const c of [...ALLOWED, ...REFUSED]) {
    test.concurrent(ALLOWED.includes(c) ? `allows ${c.name}` : c.name, async () => {
      const dir = tree(c.files);
      const project = c.ctx?.project ?? "pol";
      const model = await composeModel(runner, { ...target(dir, c.env), project });
      const v = evaluatePolicy(model, { ...context(dir, c.networks), ...c.ctx });
      expect({ rules: rules(v), text: v.length > 0 ? formatViolations("compose.yaml", v) : "" }).toEqual({
        rules: c.expect, text: c.expect.length === 0 ? "" : expect.any(String),
      });
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

  test("refuses env files docker compose would read from outside the repository, before it runs", async () => {
    const calls: string[][] = [];
    const recording: Runner = async (argv) => {
      calls.push([...argv]);
      throw new Error("docker compose must not run");
    };
    const cases: [Tree, string][] = [
      [{ "compose.yaml": file(svc("web", "    env_file: /dev/zero\n")) }, 'env_file "/dev/zero" is outside the repository'],
      [{ "compose.yaml": file(svc("web", "    env_file: [ok.env, /etc/shadow]\n")), "ok.env": "A=1\n" }, 'env_file "/etc/shadow" is outside the repository'],
      [{ "compose.yaml": file(svc("web", "    env_file:\n      - path: ../../etc/passwd\n        required: false\n")) }, 'env_file "../../etc/passwd" is outside the repository'],
      [{ "compose.yaml": file(svc("web", "    env_file: sub/zero\n")), "sub/zero": { link: "/dev/zero" } }, 'Cannot use env file "sub/zero": it leads out of the repository through a symlink'],
      [{ "compose.yaml": file(svc("web", "    env_file: envdir\n")), "envdir/x": "" }, 'Cannot use env file "envdir": it is not a regular file'],
      [{ "compose.yaml": file(svc("web", "    env_file: ${HOME}/.env\n")) }, 'env_file "${HOME}/.env" is built from a variable'],
      [{ "compose.yaml": file(svc("web")), ".env": { link: "/etc/shadow" } }, 'Cannot use env file ".env": it leads out of the repository through a symlink'],
      [{ "compose.yaml": file(svc("web")), ".env": `A="${"x".repeat(2 * 1024 * 1024)}"\n` }, 'Cannot use env file ".env": it is larger than 1048576 bytes'],
      [{ "compose.yaml": "include:\n  - path: inc.yaml\n    env_file: /etc/shadow\n", "inc.yaml": "services: {}\n" }, 'include env_file "/etc/shadow" is outside the repository'],
      [{ "compose.yaml": "include:\n  - path: inc.yaml\n    project_directory: ../..\n", "inc.yaml": "services: {}\n" }, 'include project_directory "../.." is outside the repository'],
      [{ "compose.yaml": "include:\n  - path: inc.yaml\n    project_directory: p\n", "inc.yaml": "services: {}\n", "p/.env": { link: "/dev/zero" } }, 'Cannot use env file "p/.env": it leads out of the repository through a symlink'],
      [{ "compose.yaml": "include:\n  - path: inc.yaml\n    project_directory: p\n", "inc.yaml": "services: {}\n", p: { link: "/etc" } }, 'include project_directory "p" leads out of the repository through a symlink'],
      [{ "compose.yaml": file(svc("web", "    extends: {file: sub/base.yaml, service: b}\n")), "sub/base.yaml": file("  b:\n    env_file: ../../x.env\n") }, 'env_file "../../x.env" is outside the repository'],
    ];
    for (const [files, message] of cases) {
      const e = await composeModel(recording, target(tree(files))).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(PolicyError);
      expect({ files: Object.keys(files), message: (e as Error).message }).toEqual({ files: Object.keys(files), message: expect.stringContaining(message) });
    }
    expect(calls).toEqual([]);
  });

  test("accepts env files and a .env inside the repository, through symlinks that stay inside", async () => {
    const dir = tree({
      "compose.yaml": file(svc("web", "    env_file: [app.env, {path: missing.env, required: false}, linked.env]\n")),
      "app.env": "A=1\n",
      "linked.env": { link: "app.env" },
      ".env": "B=2\n",
    });
    await screenComposeTree(dir, "compose.yaml");
    const model = await composeModel(runner, target(dir));
    expect(evaluatePolicy(model, context(dir))).toEqual([]);
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
    const model = { services: { w: { volumes: [{ type: "bind", source: "/srv/repo/link/x" }, { type: "bind", source: "/srv/repo/ok", read_only: true }, { type: "bind", source: "/data/p/db" }] } } };
    expect(evaluatePolicy(model, ctx)).toEqual([{
      service: "w", key: "services.w.volumes[0]", rule: "bind_outside", reason: RULES.find((r) => r.rule === "bind_outside")!.reason, value: "/srv/repo/link/x",
    }]);
  });

  test("treats values of unexpected types as set, and refuses a model that is not a mapping", () => {
    const model = { services: { w: { privileged: "yes", ports: "80", cap_add: { x: 1 }, devices: [], security_opt: ["seccomp=/srv/repo/allow-all.json", "label=disable"] } } };
    expect(rules(evaluatePolicy(model, ctx))).toEqual(["w:cap_add", "w:ports", "w:privileged", "w:security_opt", "w:security_opt"]);
    expect(() => evaluatePolicy([], ctx)).toThrow("Cannot check the compose model: it is not a mapping");
  });

  test("refuses a network_mode naming a network outside the allow-list, and any such network without one", () => {
    const model = { services: { a: { network_mode: "other_default" }, b: { network_mode: "reverse_proxy" }, c: { network_mode: "none" }, d: { network_mode: "bridge" } } };
    expect(rules(evaluatePolicy(model, { ...ctx, networks: ["reverse_proxy"] }))).toEqual(["a:network_not_allowed", "d:network_not_allowed"]);
    expect(rules(evaluatePolicy(model, ctx))).toEqual(["a:network_not_allowed", "b:network_not_allowed", "d:network_not_allowed"]);
  });

  test("refuses every key the allow-list does not hold, with its full path, and ignores x- keys", () => {
    const model = {
      name: "p",
      "x-top": { anything: 1 },
      future_key: 1,
      services: {
        "w.1": {
          image: "i",
          new_service_key: true,
          "x-note": { privileged: true },
          build: { context: "/srv/repo", network: "none", future_build_key: 1 },
          healthcheck: { test: ["CMD", "true"], future_health: 1 },
          volumes: [{ type: "bind", source: "/srv/repo/a", target: "/a", read_only: true, bind: { create_host_path: true, future_bind: 1 } }],
          networks: { default: { aliases: ["w"], driver_opts: { x: 1 } } },
          deploy: { resources: { limits: { memory: "1m", future_limit: 1 } }, placement: { constraints: ["a"], future_placement: 1 } },
          depends_on: { db: { condition: "service_started", future_dep: 1 } },
        },
      },
      volumes: { v: { name: "p_v", future_volume: 1 } },
      networks: { default: { name: "p_default", ipam: {}, future_network: 1 } },
      secrets: { s: { file: "/srv/repo/s", future_secret: 1 } },
    };
    const keys = evaluatePolicy(model, ctx).filter((v) => v.rule === "unknown_key").map((v) => v.key).sort();
    expect(keys).toEqual([
      "future_key",
      "networks.default.future_network",
      "secrets.s.future_secret",
      "services.w.1.build.future_build_key",
      "services.w.1.depends_on.db.future_dep",
      "services.w.1.deploy.placement.future_placement",
      "services.w.1.deploy.resources.limits.future_limit",
      "services.w.1.healthcheck.future_health",
      "services.w.1.networks.default.driver_opts",
      "services.w.1.new_service_key",
      "services.w.1.volumes[0].bind.future_bind",
      "volumes.v.future_volume",
    ]);
  });

  test("refuses links to services that are not in the project and a project name that is not the service's", () => {
    const model = { name: "q", services: { w: { links: ["db", "db:alias", "victim-web-1", "victim-web-1:db"] }, db: {} } };
    expect(rules(evaluatePolicy(model, ctx))).toEqual([":project_name", "w:links", "w:links"]);
  });

  test("the longer project name owns the names both could make", () => {
    const model = { services: { w: { volumes: ["vic_data:/d"] } }, volumes: { vic_data: { name: "x_vic_data" }, data: { name: "x_data" } } };
    const x = { ...ctx, project: "x", projects: ["x", "x_vic"] };
    expect(rules(evaluatePolicy(model, x))).toEqual([":name_collision"]);
    const vic = { services: { w: { volumes: ["data:/d"] } }, volumes: { data: { name: "x_vic_data" } } };
    expect(evaluatePolicy(vic, { ...ctx, project: "x_vic", projects: ["x", "x_vic"] })).toEqual([]);
    // Without the other project configured, the same names are free.
    expect(evaluatePolicy(model, { ...ctx, project: "x" })).toEqual([]);
  });

  test("allows Swarm's rollout settings and placement under deploy (issue 18), and nothing else in placement", () => {
    const model = { services: { w: { deploy: { replicas: 2, mode: "global", update_config: { order: "stop-first", parallelism: 1 }, rollback_config: { order: "start-first" }, placement: { constraints: ["node.role==manager"], preferences: [{ spread: "node.labels.zone" }], max_replicas_per_node: 1 } } } } };
    expect(evaluatePolicy(model, ctx)).toEqual([]);
    const odd = { services: { w: { deploy: { placement: { constraints: [], platforms: [] } } } } };
    expect(evaluatePolicy(odd, ctx).map((v) => v.key)).toEqual(["services.w.deploy.placement.platforms"]);
  });

  test("formatViolations() writes one line per violation", () => {
    const v = evaluatePolicy({ services: { web: { privileged: true, volumes: ["/etc:/e"] } } }, ctx);
    expect(formatViolations("compose.yaml", v)).toBe([
      `compose file "compose.yaml" service "web": "privileged" is refused (rule privileged): ${RULES.find((r) => r.rule === "privileged")!.reason}: "true"`,
      `compose file "compose.yaml" service "web": "volumes[0]" is refused (rule bind_outside): ${RULES.find((r) => r.rule === "bind_outside")!.reason}: "/etc"`,
    ].join("\n"));
  });

  test("RULES lists each rule once, with a one-line reason in the house grammar", () => {
    const ids = RULES.map((r) => r.rule);
    expect(new Set(ids).size).toBe(ids.length);
    for (const r of RULES) expect(r.reason).toMatch(/^[a-z][^\n]*[^.]$/);
  });
});

describe("makeEngineNames()", () => {
  test("reads the engine's volumes and networks with their compose project or Swarm stack", async () => {
    const tag = `pgo-policy-${process.pid}`;
    const docker = (...args: string[]) => runner(["docker", ...args], { env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin" } });
    await docker("volume", "create", "--label", "com.docker.compose.project=proj", `${tag}_a`);
    await docker("volume", "create", "--label", "com.docker.stack.namespace=stack", `${tag}_b`);
    await docker("volume", "create", `${tag}_c`);
    await docker("network", "create", "--label", "com.docker.compose.project=proj", `${tag}_n`);
    try {
      const names = await makeEngineNames()();
      expect([`${tag}_a`, `${tag}_b`, `${tag}_c`, `${tag}_d`].map((v) => names.volumes.get(v))).toEqual(["proj", "stack", "", undefined]);
      expect(names.networks.get(`${tag}_n`)).toBe("proj");
      expect(names.networks.get("bridge")).toBe("");
    } finally {
      await docker("volume", "rm", `${tag}_a`, `${tag}_b`, `${tag}_c`);
      await docker("network", "rm", `${tag}_n`);
    }
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
