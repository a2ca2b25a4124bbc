/** Temp directories and random names, for the tests and the benchmark. */
import { chmodSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** A new temp dir whose name starts with `prefix`; mode 0755 by default, so service users can traverse it. */
export function tempDir(prefix: string, mode = 0o755): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  chmodSync(d, mode);
  return d;
}

/** A random lowercase id of `n` characters. */
export function randomId(n: number): string {
  const abc = "abcdefghijklmnopqrstuvwxyz0123456789";
  let s = "";
  for (let i = 0; i < n; i++) s += abc[Math.floor(Math.random() * abc.length)];
  return s;
}
