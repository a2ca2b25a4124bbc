/**
 * The Compose interface for a service with `engine = "swarm"` (see swarm.ts): `docker stack` and
 * `docker service` for the stack named after the project, one handler per compose subcommand.
 */
import type { Compose, ComposeTarget } from "./compose.ts";
import { composeEnv, makeCompose } from "./compose.ts";
import { composeModel } from "./compose_model.ts";
import { CommandError } from "./errors.ts";
import type { RunResult, Runner } from "./exec.ts";
import type { SwarmApi } from "./swarm.ts";
import { planStack, readObjectFile, type StackPlan } from "./swarm_plan.ts";

const DEPLOY_TIMEOUT_MS = 15 * 60_000;
const QUICK_TIMEOUT_MS = 60_000;

/** What makeSwarm needs besides the runner. */
export interface SwarmOptions {
  api: SwarmApi;
  /** The service's cgroup(s) for `docker compose config` (see makeCgroups). */
  cgroupDir?: string | readonly string[];
  /** Called with the plan of each deploy (metrics, warnings). */
  onPlan?: (plan: StackPlan) => void;
  /** Waits while the stack is being removed; ms between polls (default 500). */
  pollMs?: number;
}

/**
 * The Compose operations pgod and pgoctl use, done with `docker stack` and `docker service` for
 * the stack named after the project: up deploys, down and stop remove the stack, ps lists tasks,
 * logs reads service logs, exec runs in a task on this node.
 */
export function makeSwarm(runner: Runner, t: ComposeTarget, o: SwarmOptions): Compose {
  const env = composeEnv(t);
  const compose = makeCompose(runner, t);
  const s: Stack = {
    t, o, compose,
    docker: (args, subcmd, io = {}, stdin) =>
      runner(["docker", ...args], {
        cwd: t.dir, env, as: t.account, check: false,
        timeoutMs: io.timeoutMs ?? QUICK_TIMEOUT_MS,
        tag: { service: t.project, cmd: "docker", subcmd },
        ...(stdin !== undefined ? { stdin } : {}),
        ...(io.signal ? { signal: io.signal } : {}),
        ...(io.onStdout ? { onStdout: io.onStdout } : {}),
        ...(io.onStderr ? { onStderr: io.onStderr } : {}),
      }),
    model: () => composeModel(runner, t, { profiles: "active", ...(o.cgroupDir ? { cgroupDir: o.cgroupDir } : {}) }),
    services: async () => (await planStack(await s.model(), t.project, async () => new Uint8Array())).services,
  };
  const run: Compose["run"] = (args, io = {}) => runStack(s, args, io);
  return {
    run,
    async must(args, timeoutMs) {
      const r = await run(args, timeoutMs !== undefined ? { timeoutMs } : {});
      if (r.exitCode !== 0) throw new CommandError({ argv: ["docker", "stack", ...args], cwd: t.dir, exitCode: r.exitCode, stderrTail: r.stderr });
      return r;
    },
    services: s.services,
    withRegistries: (registries, fn) => compose.withRegistries(registries, fn),
  };
}

type Io = NonNullable<Parameters<Compose["run"]>[1]>;

/** One stack's target and the docker commands the operations below share. */
interface Stack {
  readonly t: ComposeTarget;
  readonly o: SwarmOptions;
  readonly compose: Compose;
  docker(args: string[], subcmd: string, io?: Io, stdin?: string): Promise<RunResult>;
  /** The resolved compose model. */
  model(): Promise<unknown>;
  /** The stack's service names. */
  services(): Promise<string[]>;
}

/** Compose's run for a stack: one handler per subcommand. */
async function runStack(s: Stack, args: string[], io: Io): Promise<RunResult> {
  const [sub, ...rest] = args[0] === "--profile" ? args.slice(2) : args;
  switch (sub) {
    case "up":
    case "start":
      return deploy(s, io);
    case "restart":
      return restart(s, rest, io);
    case "down":
    case "stop":
      return remove(s, io);
    case "pull":
      // Every node pulls what it runs at deploy (with --with-registry-auth): nothing to do here.
      return result(0);
    case "ps":
      return s.docker(["stack", "ps", "--no-trunc", s.t.project], "stack", io);
    case "logs":
      return logs(s, rest, io);
    case "exec":
      return execInTask(s, rest, io);
    case "config":
      return s.compose.run(args, io);
    default:
      return fail(io, 64, `Cannot run "${sub}" for a swarm service`);
  }
}

function result(exitCode: number, stderr = ""): RunResult {
  return { exitCode, signal: null, stdout: "", stderr, durationMs: 0, timedOut: false };
}

/** Tells the client why (on its stderr) and returns the failure. */
async function fail(io: Io, exitCode: number, msg: string): Promise<RunResult> {
  await io.onStderr?.(new TextEncoder().encode(`${msg}\n`));
  return result(exitCode, msg);
}

async function deploy(s: Stack, io: Io): Promise<RunResult> {
  const { t } = s;
  let plan: StackPlan;
  try {
    plan = await planStack(await s.model(), t.project, readObjectFile);
  } catch (e) {
    return fail(io, 1, e instanceof Error ? e.message : String(e));
  }
  s.o.onPlan?.(plan);
  const r = await s.docker(
    ["stack", "deploy", "--compose-file", "-", "--with-registry-auth", "--prune", "--resolve-image", plan.resolveImage, "--detach=true", t.project],
    "stack", { ...io, timeoutMs: io.timeoutMs ?? DEPLOY_TIMEOUT_MS }, plan.text,
  );
  if (r.exitCode === 0) await pruneObjects(s, plan).catch(() => {});
  return r;
}

/** Removes config and secret revisions of this stack beyond the newest three of each key. */
async function pruneObjects(s: Stack, plan: StackPlan): Promise<void> {
  const { project } = s.t;
  for (const kind of ["config", "secret"] as const) {
    const r = await s.docker([kind, "ls", "--filter", `label=com.docker.stack.namespace=${project}`, "--format", "{{.Name}}\t{{.CreatedAt}}"], kind);
    if (r.exitCode !== 0) continue;
    const rows = r.stdout.split("\n").map((l) => {
      const [name = "", created = ""] = l.split("\t");
      return { name, created };
    }).filter((x) => x.name !== "");
    for (const key of new Set(plan.objects.filter((x) => x.kind === kind).map((x) => x.key))) {
      const prefix = `${project}_${key}_`;
      const keep = new Set(plan.objects.filter((x) => x.kind === kind && x.key === key).map((x) => x.name));
      const old = rows.filter((x) => x.name.startsWith(prefix) && /^[0-9a-f]{12}$/.test(x.name.slice(prefix.length)) && !keep.has(x.name))
        .sort((a, b) => b.created.localeCompare(a.created));
      // Objects still used by a task cannot be removed: the engine refuses, and they go next time.
      for (const { name } of old.slice(2)) await s.docker([kind, "rm", name], kind);
    }
  }
}

async function remove(s: Stack, io: Io): Promise<RunResult> {
  const { t, o } = s;
  const r = await s.docker(["stack", "rm", t.project], "stack", io);
  if (r.exitCode !== 0) return r;
  // stack rm returns before the services, tasks and networks are gone; a deploy right after
  // would find the old network. Wait (bounded, 60 s) until no service or container is left.
  for (let i = 0; i < 120; i++) {
    if ((await o.api.services(t.project)).length === 0 && (await o.api.containers(t.project)) === 0) break;
    await Bun.sleep(o.pollMs ?? 500);
  }
  return r;
}

async function restart(s: Stack, rest: string[], io: Io): Promise<RunResult> {
  const names = rest.filter((a) => !a.startsWith("-"));
  const which = names.length > 0 ? names : await s.services();
  let last = result(0);
  for (const n of which) {
    last = await s.docker(["service", "update", "--force", "--detach", `${s.t.project}_${n}`], "service", io);
    if (last.exitCode !== 0) return last;
  }
  return last;
}

async function logs(s: Stack, rest: string[], io: Io): Promise<RunResult> {
  const opts: string[] = [];
  const names: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    if (a === "-n" || a === "--tail" || a === "--since" || a === "--until") opts.push(a, rest[++i] ?? "");
    else if (a.startsWith("-")) opts.push(a);
    else names.push(a);
  }
  const which = names.length > 0 ? names : await s.services();
  const results = await Promise.all(which.map((n) => s.docker(["service", "logs", ...opts, `${s.t.project}_${n}`], "service", io)));
  return results.find((r) => r.exitCode !== 0) ?? results[0] ?? result(0);
}

/** exec in a running task of the service on this node (the engine's socket is local). */
async function execInTask(s: Stack, rest: string[], io: Io): Promise<RunResult> {
  const { t, o } = s;
  const argv = rest.filter((a, i) => !(i === 0 && a === "-T"));
  const [svc, ...cmd] = argv;
  const node = await o.api.nodeId();
  const all = await o.api.services(t.project);
  const service = all.find((x) => x.Spec.Name === `${t.project}_${svc}`);
  const tasks = service ? await o.api.tasks([service.ID]) : [];
  const here = tasks.find((x) => x.DesiredState === "running" && x.Status.State === "running" && x.NodeID === node && x.Status.ContainerStatus?.ContainerID);
  const container = here?.Status.ContainerStatus?.ContainerID;
  if (container === undefined) {
    const elsewhere = tasks.some((x) => x.DesiredState === "running" && x.Status.State === "running");
    return fail(io, 1, elsewhere
      ? `Cannot exec in "${svc}": its tasks run on other nodes of the swarm, not on this manager`
      : `Cannot exec in "${svc}": it has no running task`);
  }
  return s.docker(["exec", "-i", container, ...cmd], "exec", io);
}
