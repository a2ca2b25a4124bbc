/**
 * Where a branch of an HTTP(S) remote points, asked in-process over git's smart HTTP protocol:
 * an idle poll then starts no process at all (`git ls-remote` is three, bench/README.md). A server
 * that does not speak it gives UnsupportedRemote, and the caller asks `git ls-remote` instead.
 */
import { httpCredentials } from "./git.ts";

/** The server answered, but not in git's smart HTTP protocol (a dumb server, a login page, ...). */
export class UnsupportedRemote extends Error {
  override name = "UnsupportedRemote";
}

/** The remote did not answer in time: `git ls-remote` would hang as long. */
export class RemoteTimeout extends Error {
  override name = "RemoteTimeout";
}

export interface RefsOptions {
  timeoutMs: number;
  /** Injected for tests; the global fetch by default. */
  fetch?: (url: string, init: RequestInit) => Promise<Response>;
  /** The most bytes read of one answer (default 4 MiB; a ref advertisement of 40,000 refs fits). */
  maxBytes?: number;
}

/** Whether `url` is a remote that advertisedHead() can ask. */
export function isHttpRemote(url: string): boolean {
  return /^https?:\/\//i.test(url);
}

/**
 * The commit `refs/heads/<branch>` points at on the smart HTTP remote `url` (credentials in the
 * URL become a Basic authorisation header). Protocol v2 (`ls-refs` for just that ref) when the
 * server offers it, else the v0 advertisement. Throws UnsupportedRemote for an answer that is not
 * git's, RemoteTimeout when the server does not answer within `timeoutMs`, and an Error for a
 * failed connection or an HTTP error status; no message holds the credentials.
 */
export async function advertisedHead(url: string, branch: string, o: RefsOptions): Promise<string> {
  const { base, headers } = splitCredentials(url);
  const get = o.fetch ?? ((u: string, init: RequestInit) => fetch(u, init));
  const signal = AbortSignal.timeout(o.timeoutMs);
  const max = o.maxBytes ?? 4 * 1024 * 1024;
  const want = `refs/heads/${branch}`;

  const adv = await ask(get, `${base}/info/refs?service=git-upload-pack`, {
    headers: { ...headers, "Git-Protocol": "version=2" }, signal, redirect: "manual",
  }, "application/x-git-upload-pack-advertisement", max);
  let rest = pktLines(adv);
  // A v0 answer opens with "# service=git-upload-pack" and a flush; a v2 one may not.
  if (rest[0] === "# service=git-upload-pack\n" && rest[1] === null) rest = rest.slice(2);
  else if (rest[0] !== "version 2\n") throw new UnsupportedRemote("it is not a smart HTTP git server");
  if (rest[0] === "version 2\n") {
    if (!rest.some((l) => l !== null && /^ls-refs(=|\n)/.test(l))) throw new UnsupportedRemote("it offers no ls-refs");
    const body = pkt("command=ls-refs\n") + "0001" + pkt(`ref-prefix ${want}\n`) + "0000";
    const answer = await ask(get, `${base}/git-upload-pack`, {
      method: "POST", signal, redirect: "manual", body,
      headers: { ...headers, "Git-Protocol": "version=2", "Content-Type": "application/x-git-upload-pack-request", Accept: "application/x-git-upload-pack-result" },
    }, "application/x-git-upload-pack-result", max);
    return pick(pktLines(answer), want, branch);
  }
  return pick(rest, want, branch);
}

/** `url` without its user information and trailing slashes, and the headers of every request. */
function splitCredentials(url: string): { base: string; headers: Record<string, string> } {
  const c = httpCredentials(url);
  if (c === null) throw new UnsupportedRemote("its URL cannot be parsed");
  const headers: Record<string, string> = { "User-Agent": "git/pgod" };
  if (c.authorization !== null) headers["Authorization"] = c.authorization;
  return { base: c.bare.replace(/\/+$/, ""), headers };
}

async function ask(
  get: NonNullable<RefsOptions["fetch"]>, url: string, init: RequestInit, type: string, max: number,
): Promise<Buffer> {
  let res: Response;
  try {
    res = await get(url, init);
  } catch (e) {
    if (e instanceof Error && (e.name === "TimeoutError" || e.name === "AbortError")) {
      throw new RemoteTimeout("Cannot ask the remote for its branches: it did not answer in time");
    }
    throw new Error("Cannot ask the remote for its branches: the connection failed");
  }
  if (res.status >= 300 && res.status < 400) {
    // Not followed: the credentials would go along to wherever it points. git follows it.
    await res.body?.cancel().catch(() => {});
    throw new UnsupportedRemote(`it redirects (HTTP status ${res.status})`);
  }
  if (res.status !== 200) {
    await res.body?.cancel().catch(() => {});
    throw new Error(`Cannot ask the remote for its branches: HTTP status ${res.status}`);
  }
  if ((res.headers.get("content-type") ?? "").split(";")[0]!.trim().toLowerCase() !== type) {
    await res.body?.cancel().catch(() => {});
    throw new UnsupportedRemote(`it answered with "${res.headers.get("content-type") ?? "no content type"}"`);
  }
  const chunks: Buffer[] = [];
  let n = 0;
  try {
    for await (const chunk of res.body ?? []) {
      n += chunk.length;
      if (n > max) {
        await res.body?.cancel().catch(() => {});
        throw new UnsupportedRemote(`its answer is larger than ${max} bytes`);
      }
      chunks.push(Buffer.from(chunk));
    }
  } catch (e) {
    if (e instanceof UnsupportedRemote) throw e;
    throw new Error("Cannot ask the remote for its branches: the answer broke off");
  }
  return Buffer.concat(chunks);
}

/** One pkt-line holding `text`. */
function pkt(text: string): string {
  return (Buffer.byteLength(text) + 4).toString(16).padStart(4, "0") + text;
}

/** The payloads of the pkt-lines in `buf`; null for a flush, delimiter or response-end packet. */
export function pktLines(buf: Buffer): (string | null)[] {
  const out: (string | null)[] = [];
  let i = 0;
  while (i < buf.length) {
    const head = buf.subarray(i, i + 4).toString("latin1");
    if (!/^[0-9a-f]{4}$/.test(head)) throw new UnsupportedRemote("its answer is not made of pkt-lines");
    const len = parseInt(head, 16);
    if (len < 4) {
      out.push(null);
      i += 4;
      continue;
    }
    if (i + len > buf.length) throw new UnsupportedRemote("its answer ends inside a pkt-line");
    out.push(buf.subarray(i + 4, i + len).toString("utf8"));
    i += len;
  }
  return out;
}

/** The id on the line `<id> <want>` (v0 lines carry capabilities after a NUL; v2 lines may carry attributes). */
function pick(lines: (string | null)[], want: string, branch: string): string {
  for (const line of lines) {
    if (line === null) continue;
    const m = /^([0-9a-f]{40}|[0-9a-f]{64}) ([^\0 \n]+)/.exec(line);
    if (m && m[2] === want) return m[1]!;
  }
  throw new Error(`Cannot find branch "${branch}" on the remote`);
}
