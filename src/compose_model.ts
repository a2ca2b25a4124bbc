/** The compose model as docker compose itself resolves it, screened first and run under a memory limit. */
import { oomKills, pidsRefusals } from "./cgroup.ts";
import type { ComposeTarget } from "./compose.ts";
import { composeEnv } from "./compose.ts";
import type { Runner } from "./exec.ts";
import type { YamlLimits } from "./yaml_screen.ts";
import { screenComposeTree } from "./yaml_screen.ts";

export interface ModelOptions {
  /** Run docker compose inside this cgroup, or these (see makeCgroups). */
  cgroupDir?: string | readonly string[];
  /** Default 60 s. */
  timeoutMs?: number;
  /**
   * "all" (the default) evaluates every service of every profile: `pgoctl svc//up NAME` makes
   * docker compose start a service of an inactive profile, so those must pass the policy too.
   * "active" gives the model `docker compose up` without service names starts.
   */
  profiles?: "all" | "active";
  /** Limits for the YAML screening that comes first. */
  limits?: YamlLimits;
}

const MODEL_TIMEOUT_MS = 60_000;

/**
 * The compose model as docker compose resolves it (`config --format json`), run as the service
 * user with the service's environment. The files are screened first (screenComposeTree), so a
 * YAML bomb never reaches docker compose.
 */
export async function composeModel(runner: Runner, target: ComposeTarget, opts: ModelOptions = {}): Promise<unknown> {
  await screenComposeTree(target.dir, target.file, opts.limits);
  const argv = ["docker", "compose", "--project-name", target.project, "--file", target.file];
  if ((opts.profiles ?? "all") === "all") argv.push("--profile", "*");
  argv.push("config", "--format", "json");
  const cgroups = typeof opts.cgroupDir === "string" ? [opts.cgroupDir] : opts.cgroupDir ?? [];
  const count = async (f: (dir: string) => Promise<number>): Promise<number> => (await Promise.all(cgroups.map(f))).reduce((a, b) => a + b, 0);
  const [oomBefore, pidsBefore] = await Promise.all([count(oomKills), count(pidsRefusals)]);
  const timeoutMs = opts.timeoutMs ?? MODEL_TIMEOUT_MS;
  const r = await runner(argv, {
    cwd: target.dir,
    env: composeEnv(target),
    as: target.account,
    timeoutMs,
    check: false,
    tag: { service: target.project, cmd: "compose", subcmd: "config" },
    ...(cgroups.length > 0 ? { cgroup: cgroups } : {}),
  });
  const file = target.file;
  if (r.timedOut) throw new Error(`docker compose rejects "${file}": it took longer than ${timeoutMs} ms`);
  if (cgroups.length > 0 && (await count(oomKills)) > oomBefore) {
    throw new Error(`docker compose rejects "${file}": it ran out of its memory limit`);
  }
  if (cgroups.length > 0 && (r.exitCode !== 0 || r.signal) && (await count(pidsRefusals)) > pidsBefore) {
    throw new Error(`docker compose rejects "${file}": it ran out of its process limit`);
  }
  if (r.exitCode !== 0 || r.signal) {
    const tail = r.stderr.split(`${target.dir}/`).join("").trim().split("\n").filter((l) => l.trim()).slice(-3).join(" | ");
    throw new Error(`docker compose rejects "${file}": ${tail || (r.signal ? `killed by ${r.signal}` : `exit status ${r.exitCode}`)}`);
  }
  try {
    return JSON.parse(r.stdout) as unknown;
  } catch {
    throw new Error(`docker compose rejects "${file}": it printed no JSON model`);
  }
}


