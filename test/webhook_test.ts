import { expect, test } from "bun:test";
import { createHmac } from "node:crypto";
import { mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { memoryLogger } from "../src/log.ts";
import { handleWebhook, MAX_WEBHOOK_BYTES, readDeliveries, REPLAY_MAX, REPLAY_TTL_MS } from "../src/webhook.ts";
import type { WebhookDeps } from "../src/webhook.ts";

const SECRET = "0123456789abcdef-secret";
const PUSH = JSON.stringify({ ref: "refs/heads/main", after: "abc" });

function setup() {
  let triggered = 0;
  const d: WebhookDeps = {
    targets: new Map([["web", { branch: "main", secret: SECRET, trigger: () => void triggered++ }], ["nosecret", { branch: "main", trigger: () => void triggered++ }]]),
    logger: memoryLogger(),
    seen: new Map(),
  };
  const post = async (path: string, body: string, headers: Record<string, string>) => {
    const r = await handleWebhook(new Request(`http://pgod${path}`, { method: "POST", body, headers }), d);
    return { status: r.status, text: (await r.text()).trim() };
  };
  return { post, triggered: () => triggered };
}
const sig = (body: string, secret = SECRET) => createHmac("sha256", secret).update(body).digest("hex");

test("handleWebhook() triggers a sync for a GitHub push signed with the service's secret", async () => {
  const { post, triggered } = setup();
  expect(await post("/hooks/web", PUSH, { "x-github-event": "push", "x-github-delivery": "d1", "x-hub-signature-256": `sha256=${sig(PUSH)}` }))
    .toEqual({ status: 202, text: "sync triggered" });
  expect(triggered()).toBe(1);
});

test("handleWebhook() accepts Gitea, Forgejo and GitLab pushes", async () => {
  const { post, triggered } = setup();
  const b1 = JSON.stringify({ ref: "refs/heads/main", n: 1 });
  const b2 = JSON.stringify({ ref: "refs/heads/main", n: 2 });
  const b3 = JSON.stringify({ ref: "refs/heads/main", n: 3 });
  expect((await post("/hooks/web", b1, { "x-gitea-event": "push", "x-gitea-signature": sig(b1) })).status).toBe(202);
  expect((await post("/hooks/web", b2, { "x-forgejo-event": "push", "x-forgejo-signature": sig(b2) })).status).toBe(202);
  expect((await post("/hooks/web", b3, { "x-gitlab-event": "Push Hook", "x-gitlab-token": SECRET })).status).toBe(202);
  expect(triggered()).toBe(3);
});

test("handleWebhook() refuses unsigned, wrongly signed and unknown-service requests alike and triggers nothing", async () => {
  const { post, triggered } = setup();
  const refused = { status: 401, text: "signature does not verify" };
  expect(await post("/hooks/web", PUSH, { "x-github-event": "push" })).toEqual(refused);
  expect(await post("/hooks/web", PUSH, { "x-github-event": "push", "x-hub-signature-256": `sha256=${sig(PUSH, "another-secret-value")}` })).toEqual(refused);
  expect(await post("/hooks/web", PUSH, { "x-hub-signature-256": "sha256=zz" })).toEqual(refused);
  expect(await post("/hooks/web", PUSH, { "x-gitlab-event": "Push Hook", "x-gitlab-token": "wrong" })).toEqual(refused);
  expect(await post("/hooks/nosuch", PUSH, { "x-hub-signature-256": `sha256=${sig(PUSH)}` })).toEqual(refused);
  expect(await post("/hooks/nosecret", PUSH, { "x-hub-signature-256": `sha256=${sig(PUSH)}` })).toEqual(refused);
  expect(triggered()).toBe(0);
});

test("handleWebhook() refuses a replayed delivery and a replayed body", async () => {
  const { post, triggered } = setup();
  const h = { "x-github-event": "push", "x-github-delivery": "same", "x-hub-signature-256": `sha256=${sig(PUSH)}` };
  expect((await post("/hooks/web", PUSH, h)).status).toBe(202);
  expect(await post("/hooks/web", PUSH, h)).toEqual({ status: 409, text: "already delivered" });
  expect((await post("/hooks/web", PUSH, { ...h, "x-github-delivery": "other" })).status).toBe(409);
  expect(triggered()).toBe(1);
});

test("handleWebhook() refuses an oversized body before verifying it", async () => {
  const { post, triggered } = setup();
  const big = "x".repeat(MAX_WEBHOOK_BYTES + 10);
  expect((await post("/hooks/web", big, { "x-hub-signature-256": `sha256=${sig(big)}` })).status).toBe(413);
  expect(triggered()).toBe(0);
});

test("handleWebhook() ignores pushes to other branches and other events, and answers ping", async () => {
  const { post, triggered } = setup();
  const other = JSON.stringify({ ref: "refs/heads/dev" });
  expect(await post("/hooks/web", other, { "x-github-event": "push", "x-hub-signature-256": `sha256=${sig(other)}` }))
    .toEqual({ status: 202, text: 'ignored: not a push to "main"' });
  const issue = JSON.stringify({ action: "opened" });
  expect((await post("/hooks/web", issue, { "x-github-event": "issues", "x-hub-signature-256": `sha256=${sig(issue)}` })).text).toBe('ignored: event "issues"');
  const ping = JSON.stringify({ zen: "x" });
  expect(await post("/hooks/web", ping, { "x-github-event": "ping", "x-hub-signature-256": `sha256=${sig(ping)}` })).toEqual({ status: 200, text: "pong" });
  expect(triggered()).toBe(0);
});

test("handleWebhook() answers 404 off /hooks/ and 405 for GET", async () => {
  const { post } = setup();
  expect((await post("/other", PUSH, {})).status).toBe(404);
  const r = await handleWebhook(new Request("http://pgod/hooks/web"), { targets: new Map(), logger: memoryLogger(), seen: new Map() });
  expect(r.status).toBe(405);
});

test("handleWebhook() computes the HMAC of the body for a service with a secret, one without and one that does not exist alike", async () => {
  const macs: Array<{ bytes: number }> = [];
  const d: WebhookDeps = {
    targets: new Map([["web", { branch: "main", secret: SECRET, trigger: () => {} }], ["nosecret", { branch: "main", trigger: () => {} }]]),
    logger: memoryLogger(),
    seen: new Map(),
    hmac: (secret, body) => {
      macs.push({ bytes: body.length });
      return createHmac("sha256", secret).update(body).digest();
    },
  };
  const answers: number[] = [];
  for (const name of ["web", "nosecret", "nosuch"]) {
    const body = JSON.stringify({ ref: "refs/heads/dev", name });
    const r = await handleWebhook(new Request(`http://pgod/hooks/${name}`, {
      method: "POST", body, headers: { "x-github-event": "push", "x-hub-signature-256": `sha256=${sig(body)}` },
    }), d);
    answers.push(r.status);
  }
  expect(answers).toEqual([202, 401, 401]);
  expect(macs.map((m) => m.bytes)).toEqual(["web", "nosecret", "nosuch"].map((name) => JSON.stringify({ ref: "refs/heads/dev", name }).length));
});

test("handleWebhook() takes GitHub's form-encoded payload, with the signature over the raw body", async () => {
  const { post, triggered } = setup();
  const form = `payload=${encodeURIComponent(PUSH)}`;
  const h = { "content-type": "application/x-www-form-urlencoded", "x-github-event": "push", "x-github-delivery": "f1" };
  expect(await post("/hooks/web", form, { ...h, "x-hub-signature-256": `sha256=${sig(form)}` })).toEqual({ status: 202, text: "sync triggered" });
  // A signature over the decoded JSON is not one over the body.
  const form2 = `payload=${encodeURIComponent(JSON.stringify({ ref: "refs/heads/main", n: 2 }))}`;
  expect((await post("/hooks/web", form2, { ...h, "x-github-delivery": "f2", "x-hub-signature-256": `sha256=${sig(JSON.stringify({ ref: "refs/heads/main", n: 2 }))}` })).status).toBe(401);
  const noPayload = "other=1";
  expect((await post("/hooks/web", noPayload, { ...h, "x-github-delivery": "f3", "x-hub-signature-256": `sha256=${sig(noPayload)}` })).status).toBe(400);
  expect(triggered()).toBe(1);
});

test("handleWebhook() keeps deliveries in a file, so a replay after a restart is still refused", async () => {
  const dir = await mkdtemp(join(tmpdir(), "pgo-hooks-"));
  try {
    const file = join(dir, ".state", "webhook_deliveries.json");
    let triggered = 0;
    const targets = new Map([["web", { branch: "main", secret: SECRET, trigger: () => void triggered++ }]]);
    const h = { "x-github-event": "push", "x-github-delivery": "persist-1", "x-hub-signature-256": `sha256=${sig(PUSH)}` };
    const post = (d: WebhookDeps, headers: Record<string, string>, body = PUSH) =>
      handleWebhook(new Request("http://pgod/hooks/web", { method: "POST", body, headers }), d).then((r) => r.status);
    const first: WebhookDeps = { targets, logger: memoryLogger(), seen: await readDeliveries(file, Date.now()), deliveriesFile: file };
    expect(await post(first, h)).toBe(202);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    // "A restart": a new handler that reads the file.
    const second: WebhookDeps = { targets, logger: memoryLogger(), seen: await readDeliveries(file, Date.now()), deliveriesFile: file };
    expect(await post(second, h)).toBe(409);
    const other = JSON.stringify({ ref: "refs/heads/main", n: 9 });
    expect(await post(second, { ...h, "x-github-delivery": "persist-2", "x-hub-signature-256": `sha256=${sig(other)}` }, other)).toBe(202);
    expect(triggered).toBe(2);
    // Past the window, the file's entries are forgotten; a damaged file is an empty one.
    expect((await readDeliveries(file, Date.now() + REPLAY_TTL_MS + 1)).size).toBe(0);
    await writeFile(file, "[[\"web:delivery:x\", 1");
    expect((await readDeliveries(file, Date.now())).size).toBe(0);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("readDeliveries() keeps at most the newest REPLAY_MAX entries", async () => {
  const dir = await mkdtemp(join(tmpdir(), "pgo-hooks-"));
  try {
    const file = join(dir, "d.json");
    const now = Date.now();
    await writeFile(file, JSON.stringify(Array.from({ length: REPLAY_MAX + 50 }, (_, i) => [`web:delivery:${i}`, now - 1000 + i / 10])));
    const seen = await readDeliveries(file, now);
    expect(seen.size).toBe(REPLAY_MAX);
    expect(seen.has("web:delivery:49")).toBe(false);
    expect(seen.has(`web:delivery:${REPLAY_MAX + 49}`)).toBe(true);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
