/**
 * The volumes and networks that exist in the Docker engine, with the compose project each
 * belongs to, read from the engine's socket (no process). The compose policy refuses a model
 * that names one of another project's.
 */
import { dockerSocket } from "./containers.ts";
import { EngineError } from "./errors.ts";
import { isRecord, stringMap } from "./json.ts";
import type { EngineNames } from "./policy.ts";

/** The labels that name a resource's owner: a compose project, or a Swarm stack (engine = "swarm"). */
const OWNER_LABELS = ["com.docker.compose.project", "com.docker.stack.namespace"];

/** Reads every volume and network with its project (or stack) label ("" when none). */
export function makeEngineNames(socket = dockerSocket(), timeoutMs = 10_000): () => Promise<EngineNames> {
  const get = async (path: string): Promise<unknown> => {
    const init: RequestInit & { unix: string } = { unix: socket, signal: AbortSignal.timeout(timeoutMs) };
    const res = await fetch(`http://docker${path}`, init);
    if (!res.ok) throw new EngineError(res.status, `Cannot list the engine's ${path.slice(1)}: the Docker engine answered ${res.status}`);
    return res.json();
  };
  return async () => {
    const [vols, nets] = await Promise.all([get("/volumes"), get("/networks")]);
    const volumes = isRecord(vols) ? vols["Volumes"] : undefined;
    return { volumes: owners(volumes), networks: owners(nets) };
  };
}

/** Each named item of the engine's list with its owner label ("" when none); anything else in the list is skipped. */
function owners(list: unknown): Map<string, string> {
  const out = new Map<string, string>();
  for (const item of Array.isArray(list) ? list : []) {
    if (!isRecord(item) || typeof item["Name"] !== "string") continue;
    const labels = stringMap(item["Labels"]);
    const owner = OWNER_LABELS.map((l) => labels[l]).find((v): v is string => v !== undefined);
    out.set(item["Name"], owner ?? "");
  }
  return out;
}
