/**
 * Push webhooks from GitHub, Gitea, Forgejo and GitLab: `POST /hooks/<service>`, verified with
 * the service's `webhook_secret` (HMAC-SHA256 signature, or GitLab's token, compared in constant
 * time), then a sync of the service is triggered. Unsigned, wrongly signed, oversized and
 * replayed requests change nothing. `handleWebhook` is a plain function of a Request.
 * The deliveries seen in the last 24 hours are kept in a file, so a restart does not reopen
 * the replay window.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { readFile } from "node:fs/promises";
import { errnoCode, errorMessage } from "./errors.ts";
import { isRecord } from "./json.ts";
import { writeFileAtomic } from "./files.ts";
import type { Logger } from "./log.ts";
import { parseListenAddress } from "./ssh_protocol.ts";

/** Largest body accepted. */
export const MAX_WEBHOOK_BYTES = 1024 * 1024;
/** How long a delivery is remembered, and how many are (in memory and in the file). */
export const REPLAY_TTL_MS = 24 * 3_600_000;
export const REPLAY_MAX = 2000;
// The secret checked for a service that has none (or does not exist), so that such a request
// costs the same HMAC as any other and timing does not tell which services take webhooks.
const NO_SECRET = randomBytes(32).toString("hex");

/** What the handler needs of one service. */
export interface HookTarget {
  branch: string;
  secret?: string;
  trigger(): void;
}

export interface WebhookDeps {
  targets: ReadonlyMap<string, HookTarget>;
  logger: Logger;
  now?: () => number;
  /** Deliveries and bodies already seen, with when: filled by the handler. */
  seen: Map<string, number>;
  /** Where `seen` is kept across restarts (see readDeliveries); not kept when absent. */
  deliveriesFile?: string;
  /** The HMAC-SHA256 (injected by tests to count calls). */
  hmac?: (secret: string, body: Buffer) => Buffer;
}

const text = (status: number, body: string): Response => new Response(`${body}\n`, { status, headers: { "content-type": "text/plain" } });

/** Handles one request; never throws. */
export async function handleWebhook(req: Request, d: WebhookDeps): Promise<Response> {
  const now = d.now ?? Date.now;
  const m = /^\/hooks\/([a-z0-9][a-z0-9_-]{0,62})$/.exec(new URL(req.url).pathname);
  if (!m) return text(404, "not found");
  if (req.method !== "POST") return text(405, "method not allowed");
  const name = m[1]!;
  const declared = Number(req.headers.get("content-length") ?? "0");
  if (declared > MAX_WEBHOOK_BYTES) return text(413, "body too large");
  const body = await readLimited(req, MAX_WEBHOOK_BYTES);
  if (body === null) return text(413, "body too large");
  const t = d.targets.get(name);
  // An unknown service, one without a secret and a bad signature get the same answer after the
  // same work (an HMAC of the body), so neither the answer nor its timing tells names apart.
  const ok = verify(req.headers, body, t?.secret || NO_SECRET, d.hmac ?? hmacSha256);
  if (!t?.secret || !ok) {
    d.logger.warn("webhook refused: signature does not verify", { service: name });
    return text(401, "signature does not verify");
  }
  const event = req.headers.get("x-github-event") ?? req.headers.get("x-gitea-event") ?? req.headers.get("x-forgejo-event") ??
    req.headers.get("x-gogs-event") ?? req.headers.get("x-gitlab-event") ?? "";
  if (event === "ping") return text(200, "pong");
  // Replays: the same delivery, or the same signed body, is accepted once.
  const delivery = req.headers.get("x-github-delivery") ?? req.headers.get("x-gitea-delivery") ??
    req.headers.get("x-forgejo-delivery") ?? req.headers.get("x-gogs-delivery") ?? req.headers.get("x-gitlab-event-uuid");
  const keys = [`${name}:body:${createHash("sha256").update(body).digest("hex")}`];
  if (delivery) keys.push(`${name}:delivery:${delivery.slice(0, 200)}`);
  prune(d.seen, now());
  if (keys.some((k) => d.seen.has(k))) {
    d.logger.warn("webhook refused: replayed", { service: name });
    return text(409, "already delivered");
  }
  for (const k of keys) d.seen.set(k, now());
  if (d.deliveriesFile) await saveDeliveries(d, d.deliveriesFile);
  if (event !== "push" && event !== "Push Hook") return text(202, `ignored: event "${event}"`);
  let ref: unknown;
  try {
    const json = payloadOf(req.headers, body);
    if (json === null) return text(400, "body is not JSON");
    const payload: unknown = JSON.parse(json);
    ref = isRecord(payload) ? payload["ref"] : undefined;
  } catch {
    return text(400, "body is not JSON");
  }
  if (ref !== `refs/heads/${t.branch}`) return text(202, `ignored: not a push to "${t.branch}"`);
  d.logger.info("webhook: sync triggered", { service: name, delivery: delivery ?? undefined });
  t.trigger();
  return text(202, "sync triggered");
}

/**
 * The JSON text of a payload: the body, or for GitHub's `application/x-www-form-urlencoded`
 * deliveries its `payload` field (null when there is none; the signature covers the raw body
 * either way).
 */
function payloadOf(h: Headers, body: Buffer): string | null {
  const type = (h.get("content-type") ?? "").split(";", 1)[0]?.trim().toLowerCase() ?? "";
  if (type !== "application/x-www-form-urlencoded") return body.toString("utf8");
  return new URLSearchParams(body.toString("utf8")).get("payload");
}

function hmacSha256(secret: string, body: Buffer): Buffer {
  return createHmac("sha256", secret).update(body).digest();
}

/** Checks the forge's signature header against an HMAC-SHA256 of the body, or GitLab's token. */
function verify(h: Headers, body: Buffer, secret: string, hmac: (secret: string, body: Buffer) => Buffer): boolean {
  const mac = hmac(secret, body);
  const github = h.get("x-hub-signature-256");
  if (github !== null) return github.startsWith("sha256=") && equalHex(github.slice(7), mac);
  const gitea = h.get("x-gitea-signature") ?? h.get("x-forgejo-signature") ?? h.get("x-gogs-signature");
  if (gitea !== null) return equalHex(gitea, mac);
  const token = h.get("x-gitlab-token");
  if (token !== null) {
    // Compare digests, so the comparison takes the same time whatever the token's length.
    const a = createHash("sha256").update(token).digest();
    const b = createHash("sha256").update(secret).digest();
    return timingSafeEqual(a, b);
  }
  return false;
}

function equalHex(hex: string, mac: Buffer): boolean {
  if (!/^[0-9a-f]{64}$/i.test(hex)) return false;
  return timingSafeEqual(Buffer.from(hex, "hex"), mac);
}

async function readLimited(req: Request, max: number): Promise<Buffer | null> {
  if (!req.body) return Buffer.alloc(0);
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = req.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > max) {
      await reader.cancel().catch(() => {});
      return null;
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks);
}

/**
 * Reads the deliveries kept by an earlier run (the file is JSON: `[[key, ms], ...]`, oldest
 * first); an absent or damaged file gives an empty map, entries older than the window are dropped.
 */
export async function readDeliveries(file: string, now: number, logger?: Logger): Promise<Map<string, number>> {
  const seen = new Map<string, number>();
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    if (errnoCode(e) !== "ENOENT") logger?.warn("cannot read webhook deliveries", { file, error: errorMessage(e) });
    return seen;
  }
  let list: unknown;
  try {
    list = JSON.parse(text);
  } catch {
    logger?.warn("ignoring a damaged webhook deliveries file", { file });
    return seen;
  }
  if (!Array.isArray(list)) return seen;
  for (const entry of list.slice(-REPLAY_MAX)) {
    if (!Array.isArray(entry) || typeof entry[0] !== "string" || typeof entry[1] !== "number") continue;
    if (entry[0].length > 300 || now - entry[1] >= REPLAY_TTL_MS) continue;
    seen.set(entry[0], entry[1]);
  }
  return seen;
}

// Saves are chained, so two deliveries at once never write the file out of order.
const saving = new WeakMap<WebhookDeps, Promise<void>>();

async function saveDeliveries(d: WebhookDeps, file: string): Promise<void> {
  const p = (saving.get(d) ?? Promise.resolve()).then(() =>
    writeFileAtomic(file, JSON.stringify([...d.seen])).catch((e: unknown) => {
      d.logger.warn("cannot keep webhook deliveries: a restart forgets them", { file, error: errorMessage(e) });
    })
  );
  saving.set(d, p);
  await p;
}

function prune(seen: Map<string, number>, now: number): void {
  for (const [k, at] of seen) {
    if (now - at < REPLAY_TTL_MS && seen.size <= REPLAY_MAX) break; // oldest first: Map keeps insertion order
    seen.delete(k);
  }
}

/** Serves webhooks on `listen`. */
export function startWebhookServer(listen: string, d: WebhookDeps): { port: number; close(): Promise<void> } {
  const addr = parseListenAddress(listen);
  const server = Bun.serve({
    port: addr.port,
    ...(addr.host ? { hostname: addr.host } : {}),
    maxRequestBodySize: MAX_WEBHOOK_BYTES + 1,
    fetch: (req) => handleWebhook(req, d),
    error: () => text(400, "bad request"),
  });
  d.logger.info("webhook server listening", { address: `${server.hostname}:${server.port}` });
  return { port: server.port ?? 0, close: async () => void (await server.stop(true)) };
}
