/**
 * Helpers for the end-to-end tests: they run the built `dist/pgod` against the real Docker engine,
 * with real git repositories in temp dirs, and check the outcome with `docker` itself.
 */
import { closeSync, existsSync, openSync, readFileSync } from "node:fs";
import { chmod, chown, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { gitDirOf } from "../../src/git.ts";

/** The executable under test: `PGOD_BIN`, else the one `bash scripts/build.sh` makes. */
export const PGOD: string = process.env["PGOD_BIN"] || resolve(import.meta.dir, "../../dist/pgod");

/** The local test image; compose files name it with `pull_policy: never`. */
export const IMAGE = "pgo-busybox:1";

/** Poll interval given to pgod with `-t`. */
export const INTERVAL = "2s";
/** Poll interval for a pgod whose test needs no cycle after the first one (deploys come from elsewhere). */
export const QUIET_INTERVAL = "10m";

/** Every project, user and temp dir of this run starts with this, so a sweep can find leftovers. */
export const RUN_PREFIX: string = `e2e-${randomId(6)}-`;

/** A random lowercase id of `n` characters. */
export function randomId(n: number): string {
  const abc = "abcdefghijklmnopqrstuvwxyz0123456789";
  let s = "";
  for (let i = 0; i < n; i++) s += abc[Math.floor(Math.random() * abc.length)];
  return s;
}

/** A compose project name unique to this run and test, valid for pgod (`^[a-z0-9][a-z0-9_-]*$`). */
export function uniqueName(tag: string): string {
  return `${RUN_PREFIX}${tag}-${randomId(4)}`;
}

/** The result of a finished command. */
export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion; throws with argv, status and stderr when it fails and `check` is on. */
export async function run(
  argv: string[],
  o: { cwd?: string; env?: Record<string, string | undefined>; check?: boolean } = {},
): Promise<Ran> {
  const proc = Bun.spawn(argv, {
    cwd: o.cwd ?? "/",
    env: o.env ?? process.env,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  if ((o.check ?? true) && code !== 0) {
    throw new Error(`Command failed: ${JSON.stringify(argv)} exited ${code} in "${o.cwd ?? "/"}": ${stderr.trim()}`);
  }
  return { code, stdout, stderr };
}

/** Options of `waitFor`. */
export interface WaitOptions {
  timeoutMs?: number;
  intervalMs?: number;
}

/**
 * Polls `probe` until `ok` accepts its value, and returns that value. On timeout it throws with
 * `what` and the last value (or error) seen, so a failure says what the test was looking at.
 */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T> | T,
  ok: (v: T) => boolean,
  o: WaitOptions = {},
): Promise<T> {
  const deadline = Date.now() + (o.timeoutMs ?? 120_000);
  let last = "nothing yet";
  for (;;) {
    try {
      const v = await probe();
      if (ok(v)) return v;
      last = typeof v === "string" ? v : JSON.stringify(v);
    } catch (e) {
      last = `error: ${e instanceof Error ? e.message : String(e)}`;
    }
    if (Date.now() > deadline) {
      throw new Error(`Timed out after ${o.timeoutMs ?? 120_000} ms waiting for ${what}; last seen: ${last.slice(-2000)}`);
    }
    await Bun.sleep(o.intervalMs ?? 200);
  }
}

/** One container as `docker ps` sees it. */
export interface Container {
  id: string;
  state: string;
  service: string;
}

/**
 * Every container (all states) of compose project `project`, as `docker ps --all --filter
 * label=com.docker.compose.project=NAME` lists them. This asks the engine's API on its socket
 * rather than starting a `docker` process: the tests poll it several times a second each, and on
 * two cores that many CLI processes would slow pgod down more than anything it does itself.
 */
export async function containersOf(project: string): Promise<Container[]> {
  const filters = encodeURIComponent(JSON.stringify({ label: [`com.docker.compose.project=${project}`] }));
  const res = await fetch(`http://docker/containers/json?all=1&filters=${filters}`, {
    unix: DOCKER_SOCKET,
    signal: AbortSignal.timeout(10_000),
  } as RequestInit);
  if (!res.ok) throw new Error(`Cannot list containers: the engine answered ${res.status}: ${await res.text()}`);
  const body = (await res.json()) as Array<{ Id: string; State: string; Labels: Record<string, string> | null }>;
  return body.map((c) => ({ id: c.Id, state: c.State, service: c.Labels?.["com.docker.compose.service"] ?? "" }));
}

/** The engine's socket. */
export const DOCKER_SOCKET: string = process.env["DOCKER_HOST"]?.startsWith("unix://")
  ? process.env["DOCKER_HOST"].slice("unix://".length)
  : "/var/run/docker.sock";

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

/**
 * A compose file with one service `web` running busybox httpd; `env` becomes its `environment`.
 * Without `network`, the service has `network_mode: none`: a bridge network per project costs
 * the engine seconds of iptables work when a dozen tests start projects at once.
 */
export function composeFile(o: { env?: Record<string, string>; command?: string[]; network?: boolean } = {}): string {
  const command = o.command ?? ["/bin/httpd", "-f", "-p", "8080"];
  let y = `services:
  web:
    image: ${IMAGE}
    pull_policy: never
    # httpd runs as PID 1 and ignores SIGTERM: do not make every stop wait 10 s.
    stop_signal: SIGKILL
    command: ${JSON.stringify(command)}
`;
  if (!o.network) y += "    network_mode: none\n";
  const env = Object.entries(o.env ?? {});
  if (env.length > 0) {
    y += "    environment:\n";
    for (const [k, v] of env) y += `      ${k}: ${JSON.stringify(v)}\n`;
  }
  return y;
}

const GIT_ID = ["-c", "user.name=t", "-c", "user.email=t@t"];

/** A bare repository (the remote pgod follows) and a work clone the test commits from. */
export class Repo {
  private constructor(readonly bare: string, readonly work: string) {}

  /** Makes `<root>/remote.git` and `<root>/work`, and commits `files` as the first commit. */
  static async create(root: string, files: Record<string, string>): Promise<Repo> {
    const bare = join(root, "remote.git");
    const work = join(root, "work");
    await run(["git", "init", "--quiet", "--bare", "-b", "main", bare]);
    await run(["git", "init", "--quiet", "-b", "main", work]);
    await run(["git", "-C", work, "remote", "add", "origin", bare]);
    const repo = new Repo(bare, work);
    await repo.commit(files, "first");
    return repo;
  }

  /**
   * Writes `files` (null deletes one; missing folders are made), commits (with `signingKey`: an SSH
   * signature made with that private key file), pushes to main; returns the new commit id.
   */
  async commit(files: Record<string, string | null>, message: string, o: { signingKey?: string } = {}): Promise<string> {
    for (const [path, text] of Object.entries(files)) {
      if (text === null) await rm(join(this.work, path), { force: true });
      else {
        await mkdir(dirname(join(this.work, path)), { recursive: true });
        await writeFile(join(this.work, path), text);
      }
    }
    await run(["git", "-C", this.work, "add", "--all"]);
    const sign = o.signingKey !== undefined ? ["-c", "gpg.format=ssh", "-c", `user.signingkey=${o.signingKey}`] : [];
    await run(["git", ...GIT_ID, ...sign, "-C", this.work, "commit", "--quiet", ...(sign.length > 0 ? ["-S"] : []), "-m", message]);
    // The remote may belong to a service user. git clears GIT_CONFIG_COUNT for git-receive-pack,
    // but a global config file reaches it.
    const global = join(dirname(this.work), ".gitconfig-trust");
    await writeFile(global, "[safe]\n\tdirectory = *\n");
    await run(["git", "-C", this.work, "push", "--quiet", "origin", "HEAD:refs/heads/main"], {
      env: { ...process.env, GIT_CONFIG_GLOBAL: global },
    });
    return (await run(["git", "-C", this.work, "rev-parse", "HEAD"])).stdout.trim();
  }

  /** Force-pushes `commit` to main (a rewind, say). */
  async forcePush(commit: string): Promise<void> {
    const global = join(dirname(this.work), ".gitconfig-trust");
    await writeFile(global, "[safe]\n\tdirectory = *\n");
    await run(["git", "-C", this.work, "push", "--quiet", "--force", "origin", `${commit}:refs/heads/main`], {
      env: { ...process.env, GIT_CONFIG_GLOBAL: global },
    });
  }
}

/** The commit checked out in `dir`, or null (any owner: the checkout may belong to a service user). */
export async function headOf(dir: string): Promise<string | null> {
  // pgod keeps a checkout's git directory outside it (gitDirOf).
  const r = await run(["git", "-c", "safe.directory=*", `--git-dir=${gitDirOf(dir)}`, `--work-tree=${dir}`, "rev-parse", "--verify", "--quiet", "HEAD^{commit}"], { check: false });
  return r.code === 0 ? r.stdout.trim() : null;
}

/** One `[[services]]` table of a config. */
export interface ServiceSpec {
  name: string;
  user?: string;
  repository: string;
  /** Extra TOML lines for the table. */
  extra?: string;
}

/** The TOML text of a config with `services`. */
export function configText(services: ServiceSpec[]): string {
  return services
    .map((s) => `[[services]]\nname = "${s.name}"\nuser = "${s.user ?? "root"}"\nrepository = "${s.repository}"\n${s.extra ?? ""}`)
    .join("\n");
}

/** A running (or finished) pgod process with its log. */
export class Pgod {
  exitCode: number | null = null;
  readonly exited: Promise<number>;

  private constructor(
    readonly proc: ReturnType<typeof Bun.spawn>,
    readonly logFile: string,
  ) {
    this.exited = proc.exited.then((c) => (this.exitCode = c));
  }

  /** Starts `dist/pgod` with `--debug`, `-t 2s` and loopback servers on port 0; its stderr and stdout go to `logFile`. */
  static start(o: {
    config: string;
    dir: string;
    datadir: string;
    logFile: string;
    env?: Record<string, string | undefined>;
    args?: string[];
  }): Pgod {
    const fd = openSync(o.logFile, "a");
    try {
      const proc = Bun.spawn(
        [
          PGOD, "-c", o.config, "-d", o.dir, "--datadir", o.datadir, "-t", INTERVAL, "--debug",
          "-s", "127.0.0.1:0", "-m", "127.0.0.1:0", ...(o.args ?? []),
        ],
        { cwd: "/", env: o.env ?? process.env, stdin: "ignore", stdout: fd, stderr: fd },
      );
      return new Pgod(proc, o.logFile);
    } finally {
      closeSync(fd);
    }
  }

  /** The log so far. */
  log(): string {
    try {
      return readFileSync(this.logFile, "utf8");
    } catch {
      return "";
    }
  }

  /** Lines of the log matching `re`, from character `since` of the log on. */
  lines(re: RegExp, since = 0): string[] {
    return this.log().slice(since).split("\n").filter((l) => re.test(l));
  }

  /** Waits until at least `count` log lines (after character `since`) match `re`; returns them. */
  async waitForLog(re: RegExp, o: WaitOptions & { count?: number; since?: number } = {}): Promise<string[]> {
    const count = o.count ?? 1;
    return waitFor(
      `${count} log line(s) matching ${re} in ${this.logFile}`,
      () => {
        const ls = this.lines(re, o.since);
        if (ls.length < count && this.exitCode !== null) throw new Error(`pgod exited with ${this.exitCode}`);
        return ls;
      },
      (ls) => ls.length >= count,
      o,
    ).catch((e: Error) => {
      throw new Error(`${e.message}\nlog tail:\n${this.log().split("\n").slice(-15).join("\n")}`);
    });
  }

  /** Sends `sig` and waits (at most `ms`) for the exit status; null when it did not exit. */
  async signal(sig: NodeJS.Signals, ms = 20_000): Promise<number | null> {
    if (this.exitCode === null) this.proc.kill(sig);
    const timer = Bun.sleep(ms).then(() => null);
    return Promise.race([this.exited, timer]);
  }

  /** Ends pgod: SIGTERM, then SIGKILL if it does not go. */
  async stop(): Promise<void> {
    if (this.exitCode !== null) return;
    if ((await this.signal("SIGTERM")) === null) {
      this.proc.kill("SIGKILL");
      await this.exited;
    }
  }
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
    const env = new Env(await tempDir());
    env.dirs.push(env.root);
    return env;
  }

  /** A new temp dir (mode 0755), removed at cleanup. */
  async tempDir(mode = 0o755): Promise<string> {
    const d = await tempDir(mode);
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

async function tempDir(mode = 0o755): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), RUN_PREFIX));
  await chmod(d, mode);
  return d;
}

/** Gives `path` and everything below it to `uid:gid` (git refuses repositories of other users). */
export async function chownTree(path: string, uid: number, gid: number): Promise<void> {
  await run(["chown", "-R", `${uid}:${gid}`, path]);
  await chown(path, uid, gid);
}

/** The client under test: `PGOCTL_BIN`, else the one `bash scripts/build.sh` makes. */
export const PGOCTL: string = process.env["PGOCTL_BIN"] || resolve(import.meta.dir, "../../dist/pgoctl");

/** A client key pair made by ssh-keygen. */
export interface Key {
  /** The private key file. */
  file: string;
  /** The public key line (authorized_keys format). */
  pub: string;
  fingerprint: string;
}

/** Makes an unencrypted ed25519 key pair in `dir`. */
export async function makeKey(dir: string, name: string): Promise<Key> {
  const file = join(dir, name);
  await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", `${name}@e2e`, "-f", file]);
  const pub = await readFile(`${file}.pub`, "utf8");
  return { file, pub, fingerprint: await fingerprintOf(file) };
}

/** The SHA256 fingerprint of a key file (private or public), as ssh-keygen computes it. */
export async function fingerprintOf(file: string): Promise<string> {
  const r = await run(["ssh-keygen", "-l", "-E", "sha256", "-f", file]);
  const fp = /\b(SHA256:\S+)/.exec(r.stdout)?.[1];
  if (fp === undefined) throw new Error(`Cannot read the fingerprint of "${file}": ${r.stdout}`);
  return fp;
}

/** Where one pgod's SSH server listens and which host key it shows, from its log. */
export async function sshListening(pg: Pgod): Promise<{ port: number; hostKey: string }> {
  const [line] = await pg.waitForLog(/msg="SSH server listening" .*port=\d+ host_key=SHA256:/, { timeoutMs: 30_000 });
  const m = /port=(\d+) host_key=(SHA256:\S+)/.exec(line!)!;
  return { port: Number(m[1]), hostKey: m[2]! };
}

/** `host:port` of one pgod's metrics server, from its log. */
export async function metricsAddress(pg: Pgod): Promise<string> {
  const [line] = await pg.waitForLog(/msg="metrics server listening" address=\S+/, { timeoutMs: 30_000 });
  return /address=(\S+)/.exec(line!)![1]!;
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

/** Processes whose argv holds every one of `words` as a whole argument, as `pid: argv`. */
export async function processesWith(words: string[]): Promise<string[]> {
  const found: string[] = [];
  for (const pid of await readdir("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    let argv: string[];
    try {
      argv = (await readFile(`/proc/${pid}/cmdline`, "utf8")).split("\0").filter(Boolean);
    } catch {
      continue; // gone meanwhile
    }
    if (words.every((w) => argv.includes(w))) found.push(`${pid}: ${argv.join(" ")}`);
  }
  return found;
}

/** Runs `dist/pgoctl -i KEY -p PORT --known-hosts FILE 127.0.0.1:<target> args...` to completion. */
export function pgoctl(c: Client, target: string, ...args: string[]): Promise<Ran> {
  return run([PGOCTL, "-i", c.key.file, "-p", String(c.port), "--known-hosts", c.knownHosts, `127.0.0.1:${target}`, ...args], {
    check: false,
  });
}

/** Sends `request` as one string with OpenSSH's ssh (no config file, no agent, no host key checks). */
export function openssh(c: Client, request: string): Promise<Ran> {
  return run(
    [
      "ssh", "-F", "/dev/null", "-p", String(c.port), "-i", c.key.file, "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
      "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
      "127.0.0.1", request,
    ],
    { check: false },
  );
}

/** A log line of an exec of `docker compose ... <sub>` for project `name` (pgod runs with --debug). */
export function composeExec(name: string, sub: string): RegExp {
  return new RegExp(`msg=exec argv="docker compose --project-name ${name} .*\\b${sub}\\b`);
}

/** A log line of an exec of `git ls-remote` in the checkout of `name`: one per cycle that follows the remote. */
export function lsRemote(dir: string, name: string): RegExp {
  return new RegExp(`msg=exec argv="git ls-remote [^"]*" cwd=${join(dir, name)} `);
}

