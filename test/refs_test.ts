import { afterAll, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { advertisedHead, isHttpRemote, pktLines, RemoteTimeout, UnsupportedRemote } from "../src/refs.ts";
import { serveGitHttp } from "./git_http.ts";
import { git, tempDir, TestRepo } from "./helpers.ts";

const root = tempDir();
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A fake server answering each request with `answer`; records what it was asked. */
function fake(answer: (req: Request) => Response | Promise<Response>) {
  const seen: { method: string; path: string; headers: Headers; body: string }[] = [];
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(req) {
      const u = new URL(req.url);
      seen.push({ method: req.method, path: u.pathname + u.search, headers: req.headers, body: await req.text() });
      return answer(req);
    },
  });
  return { url: `http://127.0.0.1:${server.port}/team/app.git`, seen, stop: () => server.stop(true) };
}

const pkt = (s: string): string => (Buffer.byteLength(s) + 4).toString(16).padStart(4, "0") + s;
const A = "a".repeat(40);
const B = "b".repeat(40);

test("advertisedHead() reads the branch from a real git http-backend, protocol v2, and follows a push", async () => {
  const repo = new TestRepo(join(root, "real"));
  const server = serveGitHttp(join(root, "real"));
  try {
    const url = `${server.base}/remote.git`;
    expect(await advertisedHead(url, "main", { timeoutMs: 10_000 })).toBe(git(repo.work, "rev-parse", "HEAD"));
    const next = repo.commit({ README: "x\n" });
    expect(await advertisedHead(url, "main", { timeoutMs: 10_000 })).toBe(next);
    await expect(advertisedHead(url, "nope", { timeoutMs: 10_000 })).rejects.toThrow('Cannot find branch "nope" on the remote');
    // Two requests a poll: the capability advertisement and ls-refs for the one branch.
    expect(server.requests.slice(0, 2)).toEqual(["/remote.git/info/refs?service=git-upload-pack", "/remote.git/git-upload-pack"]);
  } finally {
    await server.stop();
  }
});

test("advertisedHead() reads a protocol v0 advertisement and sends URL credentials as Basic authorisation, not in the path", async () => {
  const f = fake(() => new Response(
    pkt("# service=git-upload-pack\n") + "0000" + pkt(`${A} HEAD\0multi_ack side-band-64k\n`) + pkt(`${B} refs/heads/main-old\n`) + pkt(`${A} refs/heads/main\n`) + "0000",
    { headers: { "Content-Type": "application/x-git-upload-pack-advertisement" } },
  ));
  try {
    const withCreds = f.url.replace("http://", "http://bot:s%40cret@");
    expect(await advertisedHead(withCreds, "main", { timeoutMs: 5000 })).toBe(A);
    expect(f.seen).toHaveLength(1);
    expect(f.seen[0]!.path).toBe("/team/app.git/info/refs?service=git-upload-pack");
    expect(f.seen[0]!.headers.get("authorization")).toBe(`Basic ${Buffer.from("bot:s@cret").toString("base64")}`);
    expect(f.seen[0]!.headers.get("git-protocol")).toBe("version=2");
  } finally {
    f.stop();
  }
});

test("a dumb HTTP server, a login page, garbage or a redirect is UnsupportedRemote; an HTTP error status is a plain Error without the credentials", async () => {
  const answers: Response[] = [
    new Response(`${A}\trefs/heads/main\n`, { headers: { "Content-Type": "text/plain" } }),
    new Response("<html>login</html>", { headers: { "Content-Type": "text/html" } }),
    new Response("zzzz", { headers: { "Content-Type": "application/x-git-upload-pack-advertisement" } }),
    new Response(pkt("version 2\n") + "0000", { headers: { "Content-Type": "application/x-git-upload-pack-advertisement" } }),
    // A redirect is not followed with the credentials: git is asked instead.
    new Response("", { status: 301, headers: { Location: "http://127.0.0.1:9/elsewhere.git/info/refs?service=git-upload-pack" } }),
  ];
  const f = fake(() => answers.shift() ?? new Response("no\n", { status: 401 }));
  try {
    for (let i = 0; i < 5; i++) {
      await expect(advertisedHead(f.url, "main", { timeoutMs: 5000 })).rejects.toBeInstanceOf(UnsupportedRemote);
    }
    const e = await advertisedHead(f.url.replace("http://", "http://u:hunter2@"), "main", { timeoutMs: 5000 }).catch((x: Error) => x);
    expect(e).not.toBeInstanceOf(UnsupportedRemote);
    expect(String(e)).toBe("Error: Cannot ask the remote for its branches: HTTP status 401");
  } finally {
    f.stop();
  }
});

test("a server that never answers is a RemoteTimeout after timeoutMs; a closed port is a failed connection", async () => {
  const f = fake(() => new Promise<Response>(() => {}));
  try {
    const t0 = performance.now();
    await expect(advertisedHead(f.url, "main", { timeoutMs: 300 })).rejects.toBeInstanceOf(RemoteTimeout);
    expect(performance.now() - t0).toBeLessThan(5000);
  } finally {
    f.stop();
  }
  const closed = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("") });
  const url = `http://127.0.0.1:${closed.port}/x.git`;
  await closed.stop(true);
  await expect(advertisedHead(url, "main", { timeoutMs: 5000 })).rejects.toThrow("Cannot ask the remote for its branches: the connection failed");
});

test("an answer over maxBytes is refused", async () => {
  const f = fake(() => new Response(pkt("# service=git-upload-pack\n") + "0000" + pkt(`${A} refs/heads/x\n`).repeat(5000), {
    headers: { "Content-Type": "application/x-git-upload-pack-advertisement" },
  }));
  try {
    await expect(advertisedHead(f.url, "main", { timeoutMs: 5000, maxBytes: 64 * 1024 })).rejects.toThrow("its answer is larger than 65536 bytes");
  } finally {
    f.stop();
  }
});

test("pktLines() splits pkt-lines and marks flush and delimiter packets", () => {
  expect(pktLines(Buffer.from(pkt("a\n") + "0000" + pkt("bc") + "0001"))).toEqual(["a\n", null, "bc", null]);
  expect(() => pktLines(Buffer.from("00ffab"))).toThrow(UnsupportedRemote);
  expect(() => pktLines(Buffer.from("xyz!"))).toThrow(UnsupportedRemote);
});

test("isHttpRemote() knows http and https URLs only", () => {
  expect(isHttpRemote("https://example.org/x.git")).toBe(true);
  expect(isHttpRemote("HTTP://tok:x@h/x.git")).toBe(true);
  expect(["git@h:x.git", "ssh://h/x.git", "/srv/git/x.git", "git://h/x.git", "file:///x"].some(isHttpRemote)).toBe(false);
});
