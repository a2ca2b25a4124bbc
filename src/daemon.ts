/** pgod's life cycle: load the config, clean up stale projects, run the loops, watch the config, exit on signals. */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, lstat, mkdir, readdir, readFile, rm } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { hostname } from "node:os";
import { dispatch } from "./commands.ts";
import { downProject, findComposePlugin } from "./compose.ts";
import type { RouterDeps } from "./commands.ts";
import { parseConfig } from "./config.ts";
import { warnIfConfigExposed } from "./config_secrets.ts";
import type { Config } from "./config.ts";
import { caddyImport } from "./caddy.ts";
import { makeDockerContainers } from "./containers.ts";
import { makeEngineNames } from "./engine_names.ts";
import { mountRecord, unmountStale } from "./mount.ts";
import { EVAL_LIMITS, EVAL_PREFIX, makeCgroups, removeCgroups, removeStaleCgroups } from "./cgroup.ts";
import type { Containers } from "./containers.ts";
import { ConfigError, errorMessage, formatProblem } from "./errors.ts";
import { gitDirOf } from "./git.ts";
import { makeRunner } from "./exec.ts";
import type { Runner } from "./exec.ts";
import { keyAllows, keysEqual } from "./keys.ts";
import { Metrics, startMetricsServer } from "./metrics.ts";
import { LongRunning } from "./long_running.ts";
import { startSshServer } from "./ssh_server.ts";
import { readDeliveries, startWebhookServer } from "./webhook.ts";
import type { SshServer } from "./ssh_server.ts";
import type { PgodFlags } from "./flags.ts";
import type { Logger } from "./log.ts";
import { ServiceWorker } from "./reconcile.ts";
import { realClock, Semaphore } from "./scheduler.ts";
import type { Clock } from "./scheduler.ts";
import { CHILD_PATH, engineEnv } from "./child_env.ts";
import { makeUsers } from "./users.ts";
import { sshConnections } from "./ssh_connections.ts";

/** Exit codes of pgod. */
export const EXIT = { ok: 0, fatal: 1, restart: 2 } as const;

export interface DaemonDeps {
  logger: Logger;
  clock?: Clock;
  random?: () => number;
  containers?: Containers;
  runner?: Runner;
  /** How often the config file is checked for changes (default 2 s). */
  watchMs?: number;
  /** Resolves when a signal asks pgod to stop; default: real process signals. */
  signals?: (handler: (sig: "SIGHUP" | "SIGINT" | "SIGTERM") => void) => () => void;
  metrics?: Metrics;
  /** Concurrent clones and deploys across services (default 4). */
  maxParallel?: number;
}

/** Runs pgod until a signal or a config change; returns the exit code. */
export async function runDaemon(flags: PgodFlags, deps: DaemonDeps): Promise<number> {
  const log = deps.logger;
  if (process.getuid?.() !== 0) {
    log.error("pgod must run as root: it runs each service as its own user");
    return EXIT.fatal;
  }
  const dir = resolve(flags.dir);
  if (dir === "/") {
    log.error(`Invalid value "${flags.dir}" for "--dir": must not be "/"`);
    return EXIT.fatal;
  }
  const configFile = resolve(flags.config);
  let config: Config;
  let configBytes: string;
  try {
    configBytes = await readFile(configFile, "utf8");
    config = parseConfig(configBytes, configFile);
  } catch (e) {
    reportConfigError(log, configFile, e);
    return EXIT.fatal;
  }
  await warnIfConfigExposed(configFile, config, log);
  try {
    await mkdir(dir, { recursive: true });
    await chmod(dir, 0o711); // service users may enter their own checkout but not list the others
    await mkdir(flags.datadir, { recursive: true });
  } catch (e) {
    log.error("cannot prepare directories", { error: errorMessage(e) });
    return EXIT.fatal;
  }
  const metrics = deps.metrics ?? new Metrics(false);
  const composePlugin: { path: string | null } = { path: null };
  const runner = deps.runner ?? makeRunner({ logger: log, observe: metrics.observe, composePlugin });
  const containers = deps.containers ?? makeDockerContainers();
  const clock = deps.clock ?? realClock;
  // Three independent chores, run side by side: start-up time is time the SSH port is closed.
  const [, cgroups] = await Promise.all([
    // Shares first: their records live in the state folders that the cleanup removes.
    unmountStale(resolve(flags.datadir), new Set(config.services.map((s) => s.name)), { runner, stateDir: join(dir, ".state") }).then(
      (gone) => gone.forEach((p) => log.info("unmounted the data share of a service that is no longer configured", { dir: p })),
      (e: unknown) => log.warn("cannot unmount stale data shares", { error: errorMessage(e) }),
    ).then(() => cleanupStale(config, dir, { runner, containers, logger: log })),
    evaluationCgroups(config, log),
  ]);
  const importText = caddyImport(config.services);

  const users = makeUsers({ runner, homeRoot: join(dir, ".home") });
  const slots = new Semaphore(deps.maxParallel ?? 4);
  const workers = new Map<string, ServiceWorker>();
  const projects = config.services.map((s) => s.name);
  // A fake engine in tests has no socket to ask.
  const engineNames = deps.containers ? undefined : makeEngineNames();
  for (const svc of config.services) {
    workers.set(svc.name, new ServiceWorker(svc, {
      runner, users, containers, logger: log, clock, random: deps.random ?? Math.random, slots,
      dir, datadir: resolve(flags.datadir), intervalMs: flags.durationMs, importText,
      ...(cgroups.has(svc.name) ? { composeCgroup: cgroups.get(svc.name)! } : {}),
      onDeploy: metrics.deployed,
      onVerify: metrics.verified,
      projects,
      ...(engineNames ? { engineNames } : {}),
      onReplicas: metrics.replicasOf,
    }));
  }
  // Kept ssh connections outlive two or three polls (jittered up to 1.5 intervals), within 1 to 30 min.
  sshConnections.idleMs = Math.min(Math.max(2.5 * flags.durationMs, 60_000), 30 * 60_000);
  log.info("starting", { services: workers.size, config: configFile, dir, interval_ms: flags.durationMs });

  let finish!: (code: number) => void;
  const done = new Promise<number>((r) => (finish = r));
  const unsubscribe = (deps.signals ?? processSignals)((sig) => {
    log.info("signal received", { signal: sig });
    if (sig !== "SIGHUP") return finish(EXIT.ok);
    // A reload restarts pgod only onto a config that will start: an invalid one is reported and
    // the running config kept, instead of a restart that exits 1 and leaves the unit failed.
    void validConfig(configFile, log).then((ok) => {
      if (ok) finish(EXIT.restart);
      else log.error("reload refused: the config file is invalid, keeping the running config", { file: configFile });
    });
  });
  let close: (() => Promise<void>) | null = null;
  let stopping = false;
  try {
    close = await startServers({ config, workers, flags, logger: log, runner, dir, metrics, healthy: () => !stopping });
  } catch (e) {
    log.error("cannot start servers", { error: errorMessage(e) });
    unsubscribe();
    return EXIT.fatal;
  }
  for (const w of workers.values()) w.start();
  metrics.collectProcessMetrics(); // after the ports listen: it takes about 10 ms
  // `docker info` takes about 0.3 s: asked after the ports listen; until it answers, deploys
  // go through `docker compose` as always.
  if (!deps.runner) {
    void findComposePlugin(runner, { PATH: CHILD_PATH, HOME: "/root", ...engineEnv() }).then((path) => {
      composePlugin.path = path;
      if (path === null) log.info("running docker compose through the docker CLI");
      else log.info("running the docker compose plugin directly", { path });
    });
  }

  const watcher = new AbortController();
  if (flags.restart) {
    void watchConfig(configFile, configBytes, { clock, logger: log, intervalMs: deps.watchMs ?? 2000, signal: watcher.signal })
      .then((changed) => changed && finish(EXIT.restart));
  }
  const code = await done;
  stopping = true;
  watcher.abort();
  unsubscribe();
  log.info("stopping: waiting for running commands", { code });
  await Promise.all([...workers.values()].map((w) => w.stop()));
  sshConnections.close();
  await close?.();
  await Promise.all([...cgroups.values()].map((dirs) => removeCgroups(dirs).catch(() => false)));
  log.info("stopped", { code });
  return code;
}

/**
 * One cgroup per service for its `docker compose config` runs, limited in memory and processes
 * (EVAL_LIMITS): docker compose has no limit on YAML aliases or on what it reads (DECISIONS.md
 * #10), and a limit shared by all services would let one service's evaluation get the others'
 * killed. Cgroups left by an earlier pgod that was killed are removed first.
 */
async function evaluationCgroups(config: Config, log: Logger): Promise<Map<string, string[]>> {
  await removeStaleCgroups(EVAL_PREFIX).catch(() => []);
  const out = new Map<string, string[]>();
  await Promise.all(config.services.map(async (s) => {
    const dirs = await makeCgroups(`${EVAL_PREFIX}-${process.pid}-${s.name}`, EVAL_LIMITS).catch(() => []);
    if (dirs.length > 0) out.set(s.name, dirs);
  }));
  if (out.size < config.services.length) log.warn("no memory cgroup for docker compose config: relying on its timeout alone");
  return out;
}

function reportConfigError(log: Logger, file: string, e: unknown): void {
  if (e instanceof ConfigError) {
    for (const p of e.problems) log.error(formatProblem(p));
  } else {
    log.error(`Cannot read config "${file}": ${errorMessage(e)}`);
  }
}

/** Whether the config file can be read and is valid; every problem is logged with its line. */
export async function validConfig(file: string, log: Logger): Promise<boolean> {
  try {
    parseConfig(await readFile(file, "utf8"), file);
    return true;
  } catch (e) {
    reportConfigError(log, file, e);
    return false;
  }
}

/**
 * Polls the config file; resolves true when its bytes changed to a valid config (pgod then exits
 * 2 so systemd restarts it). An invalid or missing file is reported once per change and ignored.
 */
export async function watchConfig(
  file: string,
  current: string,
  o: { clock: Clock; logger: Logger; intervalMs: number; signal: AbortSignal },
): Promise<boolean> {
  const hash = (s: string): string => createHash("sha256").update(s).digest("hex");
  const good = hash(current);
  let lastSeen = good;
  while (!o.signal.aborted) {
    await o.clock.sleep(o.intervalMs, o.signal);
    if (o.signal.aborted) break;
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch (e) {
      if (lastSeen !== "missing") o.logger.error("config file unreadable, keeping the running config", { file, error: errorMessage(e) });
      lastSeen = "missing";
      continue;
    }
    const h = hash(text);
    if (h === lastSeen) continue;
    lastSeen = h;
    if (h === good) {
      o.logger.info("config file is back to the running config", { file });
      continue;
    }
    try {
      parseConfig(text, file);
    } catch (e) {
      o.logger.error("config file changed but is invalid, keeping the running config", { file });
      reportConfigError(o.logger, file, e);
      continue;
    }
    o.logger.info("config file changed, exiting with status 2 to be restarted", { file });
    return true;
  }
  return false;
}

/**
 * Brings down compose projects that pgod started (their working directory is `<dir>/<name>`)
 * but that are no longer configured, and removes their checkouts. Projects elsewhere are never
 * touched. Failures are logged; they do not stop pgod.
 */
export async function cleanupStale(
  config: Config,
  dir: string,
  d: { runner: Runner; containers: Containers; logger: Logger },
): Promise<void> {
  const names = new Set(config.services.map((s) => s.name));
  const stale = new Set<string>();
  try {
    for (const c of await d.containers.all()) {
      if (c.workingDir && dirname(c.workingDir) === dir && !names.has(c.project)) stale.add(c.project);
    }
  } catch (e) {
    d.logger.warn("cannot list containers for stale cleanup", { error: errorMessage(e) });
  }
  for (const project of stale) {
    d.logger.info("bringing down a project that is no longer configured", { project });
    try {
      await downProject(d.runner, project, { PATH: CHILD_PATH, HOME: "/root" });
    } catch (e) {
      d.logger.warn("cannot bring down stale project", { project, error: errorMessage(e) });
    }
  }
  let entries: string[] = [];
  try {
    entries = await readdir(dir);
  } catch {
    return;
  }
  for (const e of entries) {
    if (e.startsWith(".") || e.endsWith(".stop") || names.has(e)) continue;
    const path = join(dir, e);
    const s = await lstat(path).catch(() => null);
    const gitDir = gitDirOf(path);
    if (!s?.isDirectory() || !(stale.has(e) || existsSync(gitDir) || existsSync(join(path, ".git")))) continue;
    d.logger.info("removing the checkout of a service that is no longer configured", { dir: path });
    for (const p of [path, gitDir]) {
      await rm(p, { recursive: true, force: true }).catch((err) => d.logger.warn("cannot remove", { dir: p, error: errorMessage(err) }));
    }
  }
  // Leftovers of an interrupted clone or evaluation.
  for (const e of entries) {
    if (e.startsWith(".clone-") || e.startsWith(".trash-") || e.startsWith(".stage-")) await rm(join(dir, e), { recursive: true, force: true }).catch(() => {});
  }
  await removeLeftovers(dir, names, new Set(config.services.map((s) => s.user)), d.logger);
}

/**
 * Removes what pgod made under `dir` for services that are gone: `.state/<name>` (history, hold,
 * state; kept while it still records a mounted share), `.docker/<name>` (DOCKER_CONFIG), and
 * `.home/<user>` of users no configured service runs as. Never anything under --datadir.
 */
async function removeLeftovers(dir: string, names: ReadonlySet<string>, users: ReadonlySet<string>, log: Logger): Promise<void> {
  const folders: [string, ReadonlySet<string>, string][] = [
    [".state", names, "state"], [".docker", names, "DOCKER_CONFIG"], [".home", users, "home"],
  ];
  for (const [folder, keep, what] of folders) {
    const parent = join(dir, folder);
    for (const e of await readdir(parent).catch(() => [] as string[])) {
      if (keep.has(e)) continue;
      const path = join(parent, e);
      const s = await lstat(path).catch(() => null);
      if (!s?.isDirectory()) continue;
      if (folder === ".state" && existsSync(mountRecord(parent, e))) {
        log.warn("keeping the state of a removed service: its data share is still mounted", { dir: path });
        continue;
      }
      log.info(`removing the ${what} folder of a service that is no longer configured`, { dir: path });
      await rm(path, { recursive: true, force: true }).catch((err) => log.warn("cannot remove", { dir: path, error: errorMessage(err) }));
    }
  }
}

function processSignals(handler: (sig: "SIGHUP" | "SIGINT" | "SIGTERM") => void): () => void {
  const sigs = ["SIGHUP", "SIGINT", "SIGTERM"] as const;
  const fns = sigs.map((s) => {
    const fn = (): void => handler(s);
    process.on(s, fn);
    return fn;
  });
  return () => sigs.forEach((s, i) => process.off(s, fns[i]!));
}

/** Starts the SSH and metrics servers; returns a function that closes both. */
async function startServers(d: {
  config: Config; workers: Map<string, ServiceWorker>; flags: PgodFlags; logger: Logger; runner: Runner; dir: string;
  metrics: Metrics; healthy: () => boolean;
}): Promise<() => Promise<void>> {
  const m = startMetricsServer(d.flags.metrics, d.metrics, d.healthy, d.logger);
  const deps: RouterDeps = {
    services: d.workers,
    keysOf: async (name) => (await d.workers.get(name)?.keys()) ?? [],
    hostname: hostname(),
    logger: d.logger,
    count: (command, result) => d.metrics.sshRequests.inc({ command, result }),
    longRunning: new LongRunning({}, d.logger),
  };
  let ssh: SshServer;
  try {
    ssh = await startSshServer({
      listen: d.flags.ssh,
      hostKeyPath: join(d.dir, "ssh_host_ed25519_key"),
      isKnownKey: async (key) => {
        const client = { ip: key.ip ?? "", now: Date.now() };
        for (const w of d.workers.values()) if ((await w.keys()).some((k) => keysEqual(k, key) && keyAllows(k, client))) return true;
        return false;
      },
      handle: (key, command, io) => dispatch(key, command, io, deps),
      logger: d.logger,
    });
  } catch (e) {
    await m.close();
    throw e;
  }
  let hooks: { close(): Promise<void> } | null = null;
  if (d.flags.webhook !== "") {
    const deliveriesFile = join(d.dir, ".state", "webhook_deliveries.json");
    try {
      hooks = startWebhookServer(d.flags.webhook, {
        targets: new Map([...d.workers].map(([name, w]) => [name, {
          branch: w.svc.branch,
          ...(w.svc.webhookSecret ? { secret: w.svc.webhookSecret } : {}),
          trigger: () => w.trigger("webhook"),
        }])),
        logger: d.logger,
        seen: await readDeliveries(deliveriesFile, Date.now(), d.logger),
        deliveriesFile,
      });
    } catch (e) {
      await ssh.close();
      await m.close();
      throw e;
    }
  }
  return async () => {
    await hooks?.close();
    await ssh.close();
    await m.close();
  };
}
