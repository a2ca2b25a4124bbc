/** Small file helpers shared by the modules that keep state on disk. */
import { randomBytes } from "node:crypto";
import { mkdir, open, rename, rm } from "node:fs/promises";
import { dirname } from "node:path";
import { errorMessage } from "./errors.ts";

/**
 * Writes a file so that it is either absent, the old version, or complete, never half written:
 * a temp file beside it (created exclusively, `mode`), fsync, rename.
 */
export async function writeFileAtomic(path: string, text: string | Uint8Array, mode = 0o600): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
  try {
    const fh = await open(tmp, "wx", mode);
    try {
      await fh.writeFile(text);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw new Error(`Cannot write "${path}": ${errorMessage(e)}`);
  }
}
