/**
 * What the deploy end-to-end tests share: one service served by its own pgod with a client key in
 * its repository, and signed push webhooks.
 */
import { createHmac, randomUUID } from "node:crypto";
import { join } from "node:path";
import { Env, makeKey, Pgod, Repo, sshListening, uniqueName } from "./harness.ts";
import type { Client, ServiceSpec } from "./harness.ts";

/** One service served by its own pgod, with a client key committed in its repository. */
export interface Served extends Client {
  name: string;
  repo: Repo;
  spec: ServiceSpec;
  pg: Pgod & { dir: string; config: string };
  checkout: string;
}

/**
 * Starts pgod with one service whose repository holds `compose` and `ssh/<tag>.pub`, and waits
 * until the first deploy is done. `extra` goes into the service's config table; `args` to pgod.
 */
export async function serve(env: Env, tag: string, compose: string, o: { extra?: string; args?: string[] } = {}): Promise<Served> {
  const name = uniqueName(tag);
  const key = await makeKey(await env.tempDir(0o700), tag);
  const repo = await env.repo({ "compose.yaml": compose, [`ssh/${tag}.pub`]: key.pub });
  const spec: ServiceSpec = { name, repository: repo.bare, ...(o.extra ? { extra: o.extra } : {}) };
  const pg = await env.pgod([spec], o.args ? { args: o.args } : {});
  const { port } = await sshListening(pg);
  await pg.waitForLog(new RegExp(`msg=deployed service=${name} `));
  return { name, repo, spec, pg, key, port, knownHosts: join(env.root, "known_hosts"), checkout: join(pg.dir, name) };
}

/** `host:port` of one pgod's webhook server, from its log. */
export function webhookAddress(pg: Pgod): Promise<string> {
  return pg.address("webhook");
}

/** A GitHub push event for `main`, signed with `secret` (null: unsigned), ready to POST. */
export function pushEvent(secret: string | null, after: string, delivery = randomUUID()): { body: string; headers: Record<string, string> } {
  const body = JSON.stringify({ ref: "refs/heads/main", after, repository: { full_name: "e2e/deploy" } });
  const headers: Record<string, string> = {
    "content-type": "application/json",
    "x-github-event": "push",
    "x-github-delivery": delivery,
  };
  if (secret !== null) headers["x-hub-signature-256"] = `sha256=${createHmac("sha256", secret).update(body).digest("hex")}`;
  return { body, headers };
}

/** POSTs `event` to `/hooks/<name>`; returns the status and the answer's text. */
export async function post(address: string, name: string, event: { body: string; headers: Record<string, string> }): Promise<{ status: number; text: string }> {
  const res = await fetch(`http://${address}/hooks/${name}`, { method: "POST", headers: event.headers, body: event.body });
  return { status: res.status, text: (await res.text()).trim() };
}

