/**
 * Helpers for the reliability tests: pgod's memory from /proc, an in-process SSH client (one
 * connection per request), percentiles, and a service set up as a non-root user.
 */
import { readFile } from "node:fs/promises";
import { Client } from "ssh2";
import { sshAlgorithms } from "../../src/ssh_protocol.ts";
import {
  chownTree, composeFile, makeKey, sshListening, uniqueName, waitFor,
} from "../e2e/harness.ts";
import type { Client as Target, Env, Key, Pgod, Repo } from "../e2e/harness.ts";
import { rssMiB } from "../kit/process.ts";

export { rssMiB } from "../kit/process.ts";
export { percentile } from "../kit/stats.ts";

/** Samples a process's RSS every `everyMs` until stopped; keeps the peak. */
export class RssSampler {
  peak = 0;
  samples = 0;
  private readonly timer: ReturnType<typeof setInterval>;

  constructor(readonly pid: number, everyMs = 100) {
    const sample = (): void => {
      const v = rssMiB(pid);
      if (Number.isFinite(v)) {
        this.peak = Math.max(this.peak, v);
        this.samples++;
      }
    };
    sample();
    this.timer = setInterval(sample, everyMs);
  }

  stop(): number {
    clearInterval(this.timer);
    return this.peak;
  }
}

/** The answer to one request over its own SSH connection. */
export interface Answer {
  /** The exit status, or null when the connection failed or closed without one. */
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
  /** Why there is no exit status (a connection error, a timeout). */
  error?: string;
}

/**
 * Opens a new SSH connection with `privateKey`, runs one exec request (a string, or raw bytes),
 * and closes. Never throws: a failure is in `error`.
 */
export function sshRequest(
  port: number,
  privateKey: string,
  command: string | Buffer,
  o: { timeoutMs?: number; onChannel?: (ch: import("ssh2").ClientChannel, hangUp: () => void) => void } = {},
): Promise<Answer> {
  const started = performance.now();
  return new Promise((resolve) => {
    const c = new Client();
    let stdout = "";
    let stderr = "";
    let settled = false;
    const finish = (code: number | null, error?: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      c.end();
      const a: Answer = { code, stdout, stderr, ms: performance.now() - started };
      if (error !== undefined) a.error = error;
      resolve(a);
    };
    const timer = setTimeout(() => {
      finish(null, `timed out after ${o.timeoutMs ?? 60_000} ms`);
      c.destroy();
    }, o.timeoutMs ?? 60_000);
    c.on("error", (e) => finish(null, `connection error: ${e.message}`));
    c.on("close", () => finish(null, "connection closed without an exit status"));
    c.on("ready", () => {
      c.exec(command as string, (err, ch) => {
        if (err) return finish(null, `exec refused: ${err.message}`);
        o.onChannel?.(ch, () => {
          finish(null, "hung up by the client");
          c.destroy();
        });
        if (!o.onChannel) ch.on("data", (d: Buffer) => (stdout += d.toString()));
        ch.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
        ch.on("close", (code: number | null) => finish(typeof code === "number" ? code : null, typeof code === "number" ? undefined : "no exit status"));
      });
    });
    c.connect({
      host: "127.0.0.1", port, username: "reliability", privateKey, algorithms: sshAlgorithms(), readyTimeout: o.timeoutMs ?? 60_000,
      hostVerifier: () => true,
    });
  });
}

/** One service of a pgod, with a client key committed in its repository. */
export interface Service extends Target {
  name: string;
  repo: Repo;
  pg: Pgod & { dir: string; config: string };
  /** The private key's text, for the in-process client. */
  keyText: string;
  user: { name: string; uid: number; gid: number } | null;
}

/**
 * Starts pgod with one service whose repository holds `files` (a compose file unless given) and
 * `ssh/<tag>.pub`; with `asUser`, the service runs as a new non-root user that owns the remote.
 * Waits for the first deploy (or, with `waitDeploy: false`, only for the clone).
 */
export async function serveOne(
  env: Env,
  tag: string,
  o: { asUser?: boolean; files?: Record<string, string>; interval?: string; extra?: string; waitDeploy?: boolean } = {},
): Promise<Service> {
  const name = uniqueName(tag);
  const key = await makeKey(await env.tempDir(0o700), tag);
  const repo = await env.repo({ "compose.yaml": composeFile(), ...o.files, [`ssh/${tag}.pub`]: key.pub });
  const user = o.asUser ? await env.user() : null;
  if (user) await chownTree(repo.bare, user.uid, user.gid);
  const pg = await env.pgod(
    [{ name, repository: repo.bare, ...(user ? { user: user.name } : {}), ...(o.extra ? { extra: o.extra } : {}) }],
    { args: ["-t", o.interval ?? "2s"] },
  );
  const { port } = await sshListening(pg);
  await pg.waitForLog(new RegExp(`msg=${o.waitDeploy === false ? "cloned" : "deployed"} service=${name} `), { timeoutMs: 120_000 });
  return { name, repo, pg, key, port, knownHosts: "/dev/null", keyText: await readFile(key.file, "utf8"), user };
}

/** A key made for a test, with its private text. */
export async function keyWithText(dir: string, name: string): Promise<Key & { text: string }> {
  const k = await makeKey(dir, name);
  return { ...k, text: await readFile(k.file, "utf8") };
}

/** Waits until pgod's RSS has settled to within `ok` of a level, polling; returns the last value. */
export async function settleRss(pid: number, ok: (mib: number) => boolean, timeoutMs = 60_000): Promise<number> {
  return waitFor("pgod's memory to settle", () => rssMiB(pid), ok, { timeoutMs, intervalMs: 500 });
}

