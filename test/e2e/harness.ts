/**
 * Helpers for the end-to-end tests: they run the built `dist/pgod` against the real Docker engine,
 * with real git repositories in temp dirs, and check the outcome with `docker` itself.
 */
import { existsSync } from "node:fs";
import { chown, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { IMAGE, listContainers } from "../kit/docker.ts";
import type { Key } from "../kit/keys.ts";
import { configText, Pgod, PGOCTL, PGOD } from "../kit/pgod.ts";
import type { ServiceSpec } from "../kit/pgod.ts";
import { run } from "../kit/process.ts";
import type { Ran as Finished } from "../kit/process.ts";
import { Repo } from "../kit/repo.ts";
import { openssh as opensshAt } from "../kit/ssh.ts";
import { randomId, tempDir } from "../kit/temp.ts";
import { waitFor } from "../kit/wait.ts";
import type { WaitOptions } from "../kit/wait.ts";

// What the e2e tests have always imported from here; it lives in test/kit/ (shared with the
// reliability tests and the benchmark).
export { composeFile, DOCKER_SOCKET, IMAGE } from "../kit/docker.ts";
export { fingerprintOf, makeKey } from "../kit/keys.ts";
export { configText, Pgod, PGOCTL, PGOD } from "../kit/pgod.ts";
export { processesWith, run } from "../kit/process.ts";
export { headOf, Repo } from "../kit/repo.ts";
export { randomId } from "../kit/temp.ts";
export { waitFor } from "../kit/wait.ts";
export type { Key, ServiceSpec, WaitOptions };

/** What a client command ended with: the tests compare it whole, so without `run`'s duration. */
export type Ran = Omit<Finished, "ms">;

function outcome(r: Finished): Ran {
  return { code: r.code, stdout: r.stdout, stderr: r.stderr };
}

/** Poll interval given to pgod with `-t`. */
export const INTERVAL = "2s";
/** Poll interval for a pgod whose test needs no cycle after the first one (deploys come from elsewhere). */
export const QUIET_INTERVAL = "10m";

/** Every project, user and temp dir of this run starts with this, so a sweep can find leftovers. */
export const RUN_PREFIX: string = `e2e-${randomId(6)}-`;

/** A compose project name unique to this run and test, valid for pgod (`^[a-z0-9][a-z0-9_-]*$`). */
export function uniqueName(tag: string): string {
  return `${RUN_PREFIX}${tag}-${randomId(4)}`;
}

/** One container as `docker ps` sees it. */
export interface Container {
  id: string;
  state: string;
  service: string;
}

/** Every container (all states) of compose project `project`, from the engine's API. */
export async function containersOf(project: string): Promise<Container[]> {
  const body = await listContainers(`com.docker.compose.project=${project}`);
  return body.map((c) => ({ id: c.Id, state: c.State, service: c.Labels?.["com.docker.compose.service"] ?? "" }));
}

/** The running containers of `project`. */
export async function runningOf(project: string): Promise<Container[]> {
  return (await containersOf(project)).filter((c) => c.state === "running");
}

/** Waits until `project` has exactly one container, running, and returns it. */
export async function waitRunning(project: string, o: WaitOptions = {}): Promise<Container> {
  const cs = await waitFor(
    `one running container of project "${project}"`,
    () => containersOf(project),
    (cs) => cs.length === 1 && cs[0]!.state === "running",
    o,
  );
  return cs[0]!;
}

/** `docker inspect` of one container, parsed. */
export async function inspect(id: string): Promise<Inspected> {
  const r = await run(["docker", "inspect", "--type", "container", id]);
  return (JSON.parse(r.stdout) as Inspected[])[0]!;
}

/** The parts of `docker inspect` the tests read. */
export interface Inspected {
  Config: { Env: string[] | null; Labels: Record<string, string> | null };
  State: { Running: boolean };
}

/** Brings a compose project down by its labels (no compose file needed) and removes what is left. */
export async function removeProject(project: string): Promise<void> {
  await run(["docker", "compose", "--project-name", project, "down", "--remove-orphans", "--timeout", "0"], { check: false });
  const left = await containersOf(project).catch(() => []);
  if (left.length > 0) await run(["docker", "rm", "--force", ...left.map((c) => c.id)], { check: false });
  const nets = await run(["docker", "network", "ls", "--quiet", "--filter", `label=com.docker.compose.project=${project}`], { check: false });
  const ids = nets.stdout.split("\n").filter(Boolean);
  if (ids.length > 0) await run(["docker", "network", "rm", ...ids], { check: false });
}

/**
 * Throws unless the binaries `bins` are built and the images `images` exist: a test file's
 * `beforeAll`, so that a missing build says so once instead of failing every test.
 */
export async function preflight(bins: string[] = [PGOD], images: string[] = [IMAGE]): Promise<void> {
  for (const bin of bins) {
    if (!existsSync(bin)) throw new Error(`Cannot find "${bin}": run "bash scripts/build.sh" first`);
  }
  for (const image of images) {
    const r = await run(["docker", "image", "inspect", "--format", "{{.Id}}", image], { check: false });
    if (r.code !== 0) throw new Error(`Cannot find image "${image}": run "bash scripts/deps.sh" first`);
  }
}

/** Removes every compose project of this run that a test left behind. */
export async function sweepRun(): Promise<void> {
  const r = await run(["docker", "ps", "--all", "--format", '{{.Label "com.docker.compose.project"}}'], { check: false });
  const nets = await run(["docker", "network", "ls", "--format", '{{.Label "com.docker.compose.project"}}'], { check: false });
  const projects = new Set(
    [...r.stdout.split("\n"), ...nets.stdout.split("\n")].filter((p) => p.startsWith(RUN_PREFIX) || p.startsWith(`other-${RUN_PREFIX}`)),
  );
  await Promise.all([...projects].map((p) => removeProject(p)));
}

/** What one test set up; `cleanup()` undoes all of it. */
export class Env {
  readonly pgods: Pgod[] = [];
  private readonly dirs: string[] = [];
  private readonly projects = new Set<string>();
  private readonly users: string[] = [];
  private readonly undo: Array<() => Promise<void>> = [];

  private constructor(readonly root: string) {}

  /** A fresh environment with its own temp dir (mode 0755, so service users can traverse it). */
  static async create(): Promise<Env> {
    const env = new Env(tempDir(RUN_PREFIX));
    env.dirs.push(env.root);
    return env;
  }

  /** A new temp dir (mode 0755), removed at cleanup. */
  async tempDir(mode = 0o755): Promise<string> {
    const d = tempDir(RUN_PREFIX, mode);
    this.dirs.push(d);
    return d;
  }

  /** Registers a compose project to bring down at cleanup. */
  project(name: string): string {
    this.projects.add(name);
    return name;
  }

  /** Runs `fn` at cleanup (before temp dirs go). */
  defer(fn: () => Promise<void>): void {
    this.undo.push(fn);
  }

  /** A bare repository plus work clone holding `files`, under a new temp dir. */
  async repo(files: Record<string, string>): Promise<Repo> {
    return Repo.create(await this.tempDir(), files);
  }

  /** Creates a system user that is not in the docker group; it is deleted at cleanup. */
  async user(): Promise<{ name: string; uid: number; gid: number }> {
    const name = `pgo-${RUN_PREFIX}${randomId(3)}`.slice(0, 31);
    await run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]);
    this.users.push(name);
    const uid = Number((await run(["id", "-u", name])).stdout.trim());
    const gid = Number((await run(["id", "-g", name])).stdout.trim());
    return { name, uid, gid };
  }

  /** `--dir` of every pgod of this environment (a restarted pgod finds its checkouts again). */
  get dir(): string {
    return join(this.root, "dir");
  }

  /** Paths of one pgod instance: `dir` and `datadir` (shared), its config and log file. */
  paths(tag = "pgod"): { dir: string; datadir: string; config: string; logFile: string } {
    return {
      dir: this.dir,
      datadir: join(this.root, "data"),
      config: join(this.root, `${tag}.toml`),
      logFile: join(this.root, `${tag}.log`),
    };
  }

  /** Writes the config for `services` and starts pgod on it; every service name is registered for cleanup. */
  async pgod(
    services: ServiceSpec[],
    o: { tag?: string; env?: Record<string, string | undefined>; args?: string[] } = {},
  ): Promise<Pgod & { dir: string; config: string }> {
    const p = this.paths(o.tag);
    for (const s of services) this.project(s.name);
    await writeFile(p.config, configText(services));
    const pg = Pgod.start({ ...p, ...(o.env ? { env: o.env } : {}), ...(o.args ? { args: o.args } : {}) });
    this.pgods.push(pg);
    return Object.assign(pg, { dir: p.dir, config: p.config });
  }

  /** Prints every pgod log of this test (for a failure). */
  printLogs(title: string): void {
    for (const pg of this.pgods) {
      console.error(`----- ${title}: ${pg.logFile} (exit ${pg.exitCode}) -----\n${pg.log()}----- end of ${pg.logFile} -----`);
    }
  }

  /** Stops pgod, removes containers and networks, users and temp dirs. Never throws. */
  async cleanup(): Promise<void> {
    const quiet = async (fn: () => Promise<unknown>): Promise<void> => {
      try {
        await fn();
      } catch (e) {
        console.error(`cleanup: ${e instanceof Error ? e.message : String(e)}`);
      }
    };
    await Promise.all(this.pgods.map((pg) => quiet(() => pg.stop())));
    for (const fn of this.undo.reverse()) await quiet(fn);
    await Promise.all([...this.projects].map((p) => quiet(() => removeProject(p))));
    for (const u of this.users) await quiet(() => run(["userdel", u]));
    await Promise.all(this.dirs.map((d) => quiet(() => rm(d, { recursive: true, force: true }))));
  }
}

/**
 * Runs one end-to-end scenario in its own environment: on failure it prints the pgod logs, and
 * it always cleans up.
 */
export async function scenario(title: string, body: (env: Env) => Promise<void>): Promise<void> {
  const env = await Env.create();
  try {
    await body(env);
  } catch (e) {
    env.printLogs(title);
    throw e;
  } finally {
    await env.cleanup();
  }
}

/** Gives `path` and everything below it to `uid:gid` (git refuses repositories of other users). */
export async function chownTree(path: string, uid: number, gid: number): Promise<void> {
  await run(["chown", "-R", `${uid}:${gid}`, path]);
  await chown(path, uid, gid);
}

/** Where one pgod's SSH server listens and which host key it shows, from its log. */
export function sshListening(pg: Pgod): Promise<{ port: number; hostKey: string }> {
  return pg.sshListening();
}

/** `host:port` of one pgod's metrics server, from its log. */
export function metricsAddress(pg: Pgod): Promise<string> {
  return pg.address("metrics");
}

/** How a client reaches one pgod as one key. */
export interface Client {
  port: number;
  key: Key;
  knownHosts: string;
}

/** `status` of service `c.name` over OpenSSH's ssh, parsed into its `key: value` lines; throws unless it exits 0. */
export async function statusOf(c: Pick<Client, "port" | "key"> & { name: string }): Promise<Record<string, string>> {
  const r = await openssh({ port: c.port, key: c.key, knownHosts: "/dev/null" }, `${c.name}//status`);
  if (r.code !== 0) throw new Error(`status exited ${r.code}: ${r.stderr}`);
  const out: Record<string, string> = {};
  for (const line of r.stdout.split("\n")) {
    const m = /^([a-z ]+):\s+(.*)$/.exec(line);
    if (m) out[m[1]!] = m[2]!;
  }
  return out;
}

/** Runs `dist/pgoctl -i KEY -p PORT --known-hosts FILE 127.0.0.1:<target> args...` to completion. */
export async function pgoctl(c: Client, target: string, ...args: string[]): Promise<Ran> {
  return outcome(await run([PGOCTL, "-i", c.key.file, "-p", String(c.port), "--known-hosts", c.knownHosts, `127.0.0.1:${target}`, ...args], {
    check: false,
  }));
}

/** Sends `request` as one string with OpenSSH's ssh (no config file, no agent, no host key checks). */
export async function openssh(c: Client, request: string): Promise<Ran> {
  return outcome(await opensshAt(c.port, c.key.file, request));
}

/** A log line of an exec of `docker compose ... <sub>` for project `name` (pgod runs with --debug). */
export function composeExec(name: string, sub: string): RegExp {
  return new RegExp(`msg=exec argv="docker compose --project-name ${name} .*\\b${sub}\\b`);
}

/** A log line of an exec of `git ls-remote` in the checkout of `name`: one per cycle that follows the remote. */
export function lsRemote(dir: string, name: string): RegExp {
  return new RegExp(`msg=exec argv="git ls-remote [^"]*" cwd=${join(dir, name)} `);
}

