/**
 * One SSH exec request as pgod serves it: what the handler gets (the client's key, two output
 * sinks with backpressure, an abort signal), the size cap on the request, the exit status that
 * goes back after all output, and the log line. Transport and login rules are ssh_server.ts's.
 */
import type { Writable } from "node:stream";
import type { ServerChannel } from "ssh2";
import { EX, errorMessage } from "./errors.ts";
import type { Logger } from "./log.ts";

/** The public key a client logged in with. */
export interface ClientKey {
  algo: string;
  blob: Buffer;
  fingerprint: string;
  /** The client's address: `from="..."` key options are checked against it (none matches without it). */
  ip?: string;
}

/** An output stream of a request; `write` resolves when the channel can take more. */
export interface Sink {
  write(chunk: Uint8Array | string): Promise<void>;
}

/** What `handle` gets to answer a request with. */
export interface SessionIO {
  stdout: Sink;
  stderr: Sink;
  /** Aborted when the client goes away or closes the channel. */
  signal: AbortSignal;
}

// Sink writes go to the channel in pieces of this size, so one huge chunk is never queued whole.
const PIECE = 64 * 1024;

/** Clamps whatever `handle` returned into an exit status 0..255 (not a number: 70). */
export function clampStatus(n: unknown): number {
  if (typeof n !== "number" || !Number.isFinite(n)) return EX.software;
  return Math.min(255, Math.max(0, Math.trunc(n)));
}

/** The first word of a request (`service//command`), printable and short, for log lines. */
export function requestName(command: string): string {
  return printable((command.trimStart().split(/\s/, 1)[0] ?? "").slice(0, 100));
}

/** Replaces control characters in client-chosen text before it reaches a log line. */
export function printable(s: string): string {
  return s.replace(/[\x00-\x1f\x7f-\x9f]/g, "?");
}

/** Who asked, on which connection (for the handler and the log line). */
export interface ExecRequest {
  key: ClientKey;
  command: string;
  /** The user name the client gave, printable. */
  user: string;
  addr: string;
  /** Aborted when the connection goes away. */
  gone: AbortSignal;
}

/** What serveExec needs besides the request. */
export interface ExecDeps {
  /** Runs one exec request and returns its exit status. */
  handle(key: ClientKey, command: string, io: SessionIO): Promise<number>;
  log: Logger;
  /** Longest exec request, in bytes (64 after a message when longer). */
  maxRequestBytes: number;
}

/**
 * Serves one exec request on `channel`: runs the handler with sinks over the channel, then sends
 * the exit status after all output, EOF and close (nothing when the client is gone), and logs
 * one line. A handler that throws is an internal error (70); its message stays in the log.
 */
export async function serveExec(channel: ServerChannel, r: ExecRequest, d: ExecDeps): Promise<void> {
  const started = performance.now();
  const ac = new AbortController();
  const abort = (): void => ac.abort();
  channel.once("close", abort);
  r.gone.addEventListener("abort", abort, { once: true });
  channel.on("error", () => {});
  channel.stderr.on("error", () => {});
  // stdin is never read: discard it so the client's window keeps moving and the channel can close.
  channel.resume();
  const stdout = channelSink(channel, ac.signal);
  const stderr = channelSink(channel.stderr, ac.signal);
  const bytes = Buffer.byteLength(r.command);
  let status: number;
  if (bytes > d.maxRequestBytes) {
    await stderr.write(`Request too long: ${bytes} bytes, the limit is ${d.maxRequestBytes}\n`);
    status = EX.usage;
  } else {
    try {
      status = clampStatus(await d.handle(r.key, r.command, { stdout: stdout.sink, stderr: stderr.sink, signal: ac.signal }));
    } catch (e) {
      d.log.error("SSH request failed", { request: requestName(r.command), key: r.key.fingerprint, error: errorMessage(e) });
      await stderr.write("Internal error\n");
      status = EX.software;
    }
  }
  // The exit status goes after all output, then EOF and close.
  await Promise.all([stdout.flush(), stderr.flush()]);
  const gone = ac.signal.aborted;
  if (!gone) {
    channel.exit(status);
    channel.end();
  }
  channel.off("close", abort);
  r.gone.removeEventListener("abort", abort);
  d.log.info("SSH request", {
    request: requestName(r.command),
    key: r.key.fingerprint,
    user: r.user,
    addr: r.addr,
    status,
    ms: Math.round(performance.now() - started),
    client_gone: gone || undefined,
  });
}

interface ChannelSink {
  sink: Sink;
  write(chunk: Uint8Array | string): Promise<void>;
  /** Waits until everything written has gone to the channel (or the client is gone); later writes are dropped. */
  flush(): Promise<void>;
}

/** A Sink over a channel stream that waits for 'drain' and never queues more than one piece past it. */
function channelSink(stream: Writable, signal: AbortSignal): ChannelSink {
  let queue: Promise<void> = Promise.resolve();
  let lastWritten: Promise<void> = Promise.resolve();
  let ended = false;
  const writeNow = async (chunk: Uint8Array | string): Promise<void> => {
    // A copy: the caller may reuse its buffer once write() resolves, while the stream still holds it.
    const buf = typeof chunk === "string" ? Buffer.from(chunk, "utf8") : Buffer.from(chunk);
    for (let off = 0; off < buf.length; off += PIECE) {
      if (ended || signal.aborted) return;
      let done!: () => void;
      lastWritten = new Promise<void>((resolve) => (done = resolve));
      const more = stream.write(buf.subarray(off, off + PIECE), () => done());
      if (!more) await until(stream, "drain", signal);
    }
  };
  const write = (chunk: Uint8Array | string): Promise<void> => {
    // Writes are chained so concurrent callers never interleave pieces.
    const p = queue.then(() => writeNow(chunk));
    queue = p.catch(() => {});
    return p;
  };
  return {
    sink: { write },
    write,
    async flush(): Promise<void> {
      await queue;
      ended = true;
      await Promise.race([lastWritten, until(stream, "close", signal)]);
    },
  };
}

/** Resolves on `event`, on the stream's close, or when `signal` aborts. */
function until(stream: Writable, event: string, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      stream.off(event, done);
      stream.off("close", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    stream.once(event, done);
    stream.once("close", done);
    signal.addEventListener("abort", done, { once: true });
  });
}
