/**
 * A real smart HTTP git server for tests and the benchmark: Bun.serve on 127.0.0.1 in front of
 * `git http-backend` (git's own CGI program), serving every bare repository under `root`. Read
 * only: pushes go to the bare repository's path.
 */
import { statSync } from "node:fs";

export interface GitHttpServer {
  /** `http://127.0.0.1:<port>`; a repository `<root>/x.git` is at `${base}/x.git`. */
  base: string;
  /** Requests answered so far, by path and query ("/x.git/info/refs?service=git-upload-pack"). */
  requests: string[];
  stop(): Promise<void>;
}

const BACKEND = "/usr/lib/git-core/git-http-backend";

/** With `auth`, every request must carry it as Basic authorisation, else it gets a 401. */
export function serveGitHttp(root: string, o: { auth?: { user: string; pass: string } } = {}): GitHttpServer {
  statSync(BACKEND); // throws ENOENT early when git's CGI program is missing
  const requests: string[] = [];
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(req) {
      const url = new URL(req.url);
      requests.push(url.pathname + url.search);
      if (o.auth && req.headers.get("authorization") !== `Basic ${Buffer.from(`${o.auth.user}:${o.auth.pass}`).toString("base64")}`) {
        return new Response("Authentication required\n", { status: 401, headers: { "WWW-Authenticate": 'Basic realm="git"' } });
      }
      if (url.pathname.includes("git-receive-pack") || url.search.includes("git-receive-pack")) {
        return new Response("read only\n", { status: 403 });
      }
      const body = req.method === "POST" ? Buffer.from(await req.arrayBuffer()) : null;
      const env: Record<string, string> = {
        PATH: process.env["PATH"] ?? "/usr/bin:/bin",
        GIT_PROJECT_ROOT: root,
        GIT_HTTP_EXPORT_ALL: "1",
        GIT_CONFIG_NOSYSTEM: "1",
        HOME: root,
        REQUEST_METHOD: req.method,
        PATH_INFO: decodeURIComponent(url.pathname),
        QUERY_STRING: url.search.slice(1),
        REMOTE_ADDR: "127.0.0.1",
        CONTENT_TYPE: req.headers.get("content-type") ?? "",
        ...(body ? { CONTENT_LENGTH: String(body.length) } : {}),
        ...(req.headers.get("git-protocol") ? { GIT_PROTOCOL: req.headers.get("git-protocol")! } : {}),
        ...(req.headers.get("content-encoding") ? { HTTP_CONTENT_ENCODING: req.headers.get("content-encoding")! } : {}),
      };
      const p = Bun.spawn([BACKEND], { env, stdin: body ?? "ignore", stdout: "pipe", stderr: "ignore" });
      const out = Buffer.from(await new Response(p.stdout).arrayBuffer());
      await p.exited;
      const split = out.indexOf("\r\n\r\n") >= 0 ? out.indexOf("\r\n\r\n") : out.indexOf("\n\n");
      if (split < 0) return new Response("bad CGI answer\n", { status: 502 });
      const sep = out[split] === 13 ? 4 : 2;
      const headers = new Headers();
      let status = 200;
      for (const line of out.subarray(0, split).toString("latin1").split(/\r?\n/)) {
        const i = line.indexOf(":");
        if (i < 0) continue;
        const k = line.slice(0, i).trim();
        const v = line.slice(i + 1).trim();
        if (k.toLowerCase() === "status") status = Number(v.split(" ")[0]);
        else headers.append(k, v);
      }
      return new Response(out.subarray(split + sep), { status, headers });
    },
  });
  return {
    base: `http://127.0.0.1:${server.port}`,
    requests,
    stop: async () => {
      await server.stop(true);
    },
  };
}
