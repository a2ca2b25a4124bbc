/**
 * Git remotes on 127.0.0.1 that can be switched into a fault while pgod follows them: one URL that
 * serves a real repository, then refuses connections, hangs, or answers 401, then serves again.
 * They let a test break a remote under a checkout pgod already has, and mend it, without a
 * config change (and so without a pgod restart).
 */
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import type { Server, Socket } from "node:net";
import { readFile } from "node:fs/promises";
import { basename, dirname, join, normalize } from "node:path";
import { run } from "../kit/process.ts";

/** What a git:// front does with a new connection. */
export type GitMode = "serve" | "hang" | "refuse";

/**
 * A git:// server for one bare repository. "serve" hands each connection to `git daemon
 * --inetd`; "hang" accepts and never answers a byte; "refuse" stops listening, so connections
 * are refused (the same port is taken again on the next switch).
 */
export class GitFront {
  /** Connections accepted in each mode. */
  readonly accepted: Record<GitMode, number> = { serve: 0, hang: 0, refuse: 0 };
  private readonly held = new Set<Socket>();
  private server: Server | null = null;
  private current: GitMode = "serve";

  private constructor(readonly bare: string, public port: number) {}

  /** Starts serving `bare` (a path `<root>/<name>.git`) on a new port. */
  static async start(bare: string): Promise<GitFront> {
    const front = new GitFront(bare, 0);
    await front.listen();
    return front;
  }

  /** The URL pgod is configured with. */
  get url(): string {
    return `git://127.0.0.1:${this.port}/${basename(this.bare)}`;
  }

  get mode(): GitMode {
    return this.current;
  }

  /** Connections accepted and still open (held by "hang"). */
  get open(): number {
    return this.held.size;
  }

  /** Switches the mode; switching out of "hang" drops the held connections. */
  async set(mode: GitMode): Promise<void> {
    this.current = mode;
    if (mode !== "hang") this.dropHeld();
    if (mode === "refuse") await this.unlisten();
    else if (this.server === null) await this.listen();
  }

  /** Stops listening and drops every connection. */
  async close(): Promise<void> {
    this.dropHeld();
    await this.unlisten();
  }

  private dropHeld(): void {
    for (const s of this.held) s.destroy();
    this.held.clear();
  }

  private listen(): Promise<void> {
    const server = createServer((sock) => this.accept(sock));
    return new Promise((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.port, "127.0.0.1", () => {
        const addr = server.address();
        if (addr === null || typeof addr === "string") return reject(new Error("Cannot read the port of the git front"));
        this.port = addr.port;
        this.server = server;
        resolve();
      });
    });
  }

  private unlisten(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (s === null) return Promise.resolve();
    return new Promise((resolve) => s.close(() => resolve()));
  }

  private accept(sock: Socket): void {
    this.accepted[this.current]++;
    sock.on("error", () => {});
    if (this.current !== "serve") {
      // Read (and drop) what the client sends, so that its end is seen and the socket closes.
      this.held.add(sock);
      sock.on("close", () => this.held.delete(sock));
      sock.resume();
      return;
    }
    const d = spawn("git", ["daemon", "--inetd", "--export-all", `--base-path=${dirname(this.bare)}`, dirname(this.bare)], {
      stdio: ["pipe", "pipe", "ignore"],
    });
    d.on("error", () => sock.destroy());
    d.stdin.on("error", () => {});
    sock.pipe(d.stdin);
    d.stdout.pipe(sock);
    sock.on("close", () => d.kill("SIGKILL"));
  }
}

/** What an HTTP remote answers. */
export type HttpMode = "serve" | "unauthorized";

/**
 * A git remote over git's "dumb" HTTP protocol (static files of the bare repository), or a 401
 * with a Basic challenge to every request. Call `refresh()` after each push.
 */
export class HttpRemote {
  mode: HttpMode = "serve";
  /** Requests answered in each mode. */
  readonly requests: Record<HttpMode, number> = { serve: 0, unauthorized: 0 };
  private constructor(readonly bare: string, private readonly server: ReturnType<typeof Bun.serve>) {}

  /** Serves `bare` on a new port. */
  static async start(bare: string): Promise<HttpRemote> {
    let self: HttpRemote | null = null;
    const server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: (req) => self!.answer(req),
    });
    self = new HttpRemote(bare, server);
    await self.refresh();
    return self;
  }

  get url(): string {
    return `http://127.0.0.1:${this.server.port}/${basename(this.bare)}`;
  }

  /** Writes the index files dumb HTTP clients read (`git update-server-info`). */
  async refresh(): Promise<void> {
    await run(["git", "-C", this.bare, "update-server-info"]);
  }

  async close(): Promise<void> {
    await this.server.stop(true);
  }

  private async answer(req: Request): Promise<Response> {
    this.requests[this.mode]++;
    if (this.mode === "unauthorized") {
      return new Response("Authentication required\n", { status: 401, headers: { "WWW-Authenticate": 'Basic realm="git"' } });
    }
    const path = normalize(decodeURIComponent(new URL(req.url).pathname));
    const prefix = `/${basename(this.bare)}/`;
    if (!path.startsWith(prefix)) return new Response("Not found\n", { status: 404 });
    try {
      const body = await readFile(join(this.bare, path.slice(prefix.length)));
      return new Response(body, { headers: { "Content-Type": "application/octet-stream" } });
    } catch {
      return new Response("Not found\n", { status: 404 });
    }
  }
}
