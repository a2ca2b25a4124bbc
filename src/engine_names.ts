/**
 * The volumes and networks that exist in the Docker engine, with the compose project each
 * belongs to, read from the engine's socket (no process). The compose policy refuses a model
 * that names one of another project's.
 */
import { dockerSocket } from "./containers.ts";
import type { EngineNames } from "./policy.ts";

/** The labels that name a resource's owner: a compose project, or a Swarm stack (engine = "swarm"). */
const OWNER_LABELS = ["com.docker.compose.project", "com.docker.stack.namespace"];

interface Named {
  Name?: unknown;
  Labels?: unknown;
}

/** Reads every volume and network with its project (or stack) label ("" when none). */
export function makeEngineNames(socket = dockerSocket(), timeoutMs = 10_000): () => Promise<EngineNames> {
  const get = async (path: string): Promise<unknown> => {
    const res = await fetch(`http://docker${path}`, { unix: socket, signal: AbortSignal.timeout(timeoutMs) } as RequestInit);
    if (!res.ok) throw new Error(`Cannot list the engine's ${path.slice(1)}: the Docker engine answered ${res.status}`);
    return res.json();
  };
  return async () => {
    const [vols, nets] = await Promise.all([get("/volumes"), get("/networks")]);
    const volumes = (vols as { Volumes?: unknown } | null)?.Volumes;
    return { volumes: owners(volumes), networks: owners(nets) };
  };
}

function owners(list: unknown): Map<string, string> {
  const out = new Map<string, string>();
  for (const item of Array.isArray(list) ? (list as Named[]) : []) {
    if (typeof item?.Name !== "string") continue;
    const labels = typeof item.Labels === "object" && item.Labels !== null ? (item.Labels as Record<string, unknown>) : {};
    const owner = OWNER_LABELS.map((l) => labels[l]).find((v): v is string => typeof v === "string");
    out.set(item.Name, owner ?? "");
  }
  return out;
}
