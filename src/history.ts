/**
 * The durable deploy history of a service: one JSON line per deploy attempt, appended to
 * `<dir>/.state/<name>/history`. It survives restarts; a torn last line (a crash mid-write) is
 * skipped when read. The file is kept under a size bound by dropping its oldest half.
 */
import { mkdir, open, readFile, rename, stat } from "node:fs/promises";
import { dirname } from "node:path";

/** What started a deploy. */
export type HistoryTrigger = "start" | "poll" | "pgoctl" | "webhook" | "rollback";

/** How a deploy attempt ended; `unverified`: the commit's signature did not verify (`verify = "commits"`). */
export type HistoryResult = "deployed" | "rolled back" | "refused by policy" | "failed" | "unverified";

/** One deploy attempt. */
export interface HistoryEntry {
  commit: string;
  /** Unix time in ms when it started. */
  time: number;
  trigger: HistoryTrigger;
  result: HistoryResult;
  durationMs: number;
  /** Why it failed or was refused (no secrets). */
  detail?: string;
}

const MAX_BYTES = 256 * 1024;

/** Appends one entry (fsync'd), trimming the file to its newer half once it grows past the bound. */
export async function appendHistory(file: string, e: HistoryEntry): Promise<void> {
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  const size = await stat(file).then((s) => s.size, () => 0);
  if (size > MAX_BYTES) {
    const text = await readFile(file, "utf8");
    const keep = text.slice(text.indexOf("\n", Math.floor(text.length / 2)) + 1);
    const tmp = `${file}.tmp-${process.pid}`;
    const fh = await open(tmp, "w", 0o600);
    await fh.writeFile(keep);
    await fh.sync();
    await fh.close();
    await rename(tmp, file);
  }
  const fh = await open(file, "a+", 0o600);
  try {
    // A torn last line (a crash or a full disk mid-append) must not swallow this entry too.
    const end = (await fh.stat()).size;
    const last = end > 0 ? (await fh.read(Buffer.alloc(1), 0, 1, end - 1)).buffer[0] : undefined;
    await fh.writeFile(`${last === undefined || last === 0x0a ? "" : "\n"}${JSON.stringify(e)}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Reads the entries, oldest first; unreadable lines are skipped. */
export async function readHistory(file: string): Promise<HistoryEntry[]> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch {
    return [];
  }
  const out: HistoryEntry[] = [];
  for (const line of text.split("\n")) {
    if (!line) continue;
    try {
      const v: unknown = JSON.parse(line);
      if (isEntry(v)) out.push(v);
    } catch {
      // A torn line from a crash mid-write.
    }
  }
  return out;
}

function isEntry(v: unknown): v is HistoryEntry {
  if (typeof v !== "object" || v === null) return false;
  const o = v as Record<string, unknown>;
  return typeof o["commit"] === "string" && typeof o["time"] === "number" && typeof o["trigger"] === "string" &&
    typeof o["result"] === "string" && typeof o["durationMs"] === "number";
}

/** The lines `history [N]` prints, newest first. */
export function formatHistory(entries: readonly HistoryEntry[], n: number): string {
  return entries.slice(-n).reverse().map((e) =>
    `${new Date(e.time).toISOString()}  ${e.commit.slice(0, 12)}  ${e.trigger.padEnd(8)}  ${e.result.padEnd(17)}  ${(e.durationMs / 1000).toFixed(1)}s${e.detail ? `  ${e.detail}` : ""}`
  ).join("\n") + (entries.length ? "\n" : "");
}
