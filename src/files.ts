/** Small file helpers shared by the modules that keep state on disk. */
import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { mkdir, open, rename, rm } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { dirname, normalize } from "node:path";
import { FileError, errorMessage, errnoCode } from "./errors.ts";

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
    throw new FileError(path, "unwritable", errorMessage(e), { op: "write", cause: e });
  }
}

/**
 * The bytes of the regular file `path`, of at most `max` bytes, read through one descriptor so
 * the checks and the read see the same file: a symlink at `path` is refused (O_NOFOLLOW), a FIFO
 * does not block the open (O_NONBLOCK) and is refused with anything else that is not a regular
 * file (fstat), and a file that grows past `max` while it is read is refused too. Throws a
 * FileError naming the path and the reason.
 */
export async function readCapped(path: string, max: number): Promise<Uint8Array> {
  let fh: FileHandle;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    const code = errnoCode(e);
    if (code === "ELOOP") throw new FileError(path, "symlink", "it is a symlink (symlinks are not followed)", { cause: e });
    if (code === "ENOENT") throw new FileError(path, "missing", "it does not exist", { cause: e });
    throw new FileError(path, "unreadable", code ?? errorMessage(e), { cause: e });
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new FileError(path, "not a regular file", "it is not a regular file");
    const tooLarge = (): FileError => new FileError(path, "too large", `it is larger than ${max} bytes`);
    if (st.size > max) throw tooLarge();
    // One byte more than allowed, so that a file that grew since fstat is still caught.
    const buf = Buffer.alloc(Math.min(st.size, max) + 1);
    let n = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
      if (bytesRead === 0) break;
      n += bytesRead;
      if (n > max) throw tooLarge();
      if (n === buf.length) break; // it grew since fstat, but not past max: what was read is enough
    }
    return buf.subarray(0, n);
  } catch (e) {
    if (e instanceof FileError) throw e;
    throw new FileError(path, "unreadable", errnoCode(e) ?? errorMessage(e), { cause: e });
  } finally {
    await fh.close();
  }
}

/** Where the open directory `fd` is reached without resolving any path again (openat without openat). */
function at(fd: number, name: string): string {
  return `/proc/self/fd/${fd}/${name}`;
}

const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;

/** Options of writeFileBeneath. */
export interface BeneathOptions {
  /** Mode of a new file (default 0644) and of new directories (0755). */
  mode?: number;
  /** Owner of what is written (and of directories made on the way). */
  owner?: { uid: number; gid: number };
  /** Whether missing directories on the way are made (default true). */
  mkdirs?: boolean;
  /** Whether a file that holds exactly `text` already is written again, to reset its mode and owner (default false). */
  rewrite?: boolean;
}

/**
 * Writes `text` to `<root>/<rel>` unless it already holds exactly that; returns whether it wrote.
 * Made for directories that someone else can write (a checkout a container binds): no symlink is
 * ever followed, neither on the way (each directory is opened with O_NOFOLLOW and the next one
 * reached through the open one, so a directory swapped for a symlink meanwhile is refused) nor at
 * the end (the text goes to a new file beside it, created exclusively, then renamed over it: a
 * symlink there is replaced, never written through). `root` itself must be trusted.
 */
export async function writeFileBeneath(root: string, rel: string, text: string | Uint8Array, o: BeneathOptions = {}): Promise<boolean> {
  const parts = normalize(rel).split("/").filter((p) => p !== "" && p !== ".");
  const name = parts.pop();
  if (name === undefined || parts.includes("..") || name === "..") {
    throw new FileError(rel, "not beneath", "not a path inside it", { op: "write", in: root });
  }
  const opened: FileHandle[] = [];
  try {
    let dir = await open(root, DIR_FLAGS);
    opened.push(dir);
    for (const p of parts) {
      let next: FileHandle;
      try {
        next = await open(at(dir.fd, p), DIR_FLAGS);
      } catch (e) {
        if (errnoCode(e) !== "ENOENT" || o.mkdirs === false) throw whyNot(rel, p, e);
        await mkdir(at(dir.fd, p), { mode: 0o755 });
        next = await open(at(dir.fd, p), DIR_FLAGS);
        if (o.owner) await next.chown(o.owner.uid, o.owner.gid);
      }
      opened.push(next);
      dir = next;
    }
    const old = await readBeneath(dir.fd, name, rel, root);
    const bytes = typeof text === "string" ? Buffer.from(text) : text;
    if (!o.rewrite && old !== null && old.equals(bytes)) return false;
    const tmp = `.${name}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
    const fh = await open(at(dir.fd, tmp), constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, o.mode ?? 0o644);
    try {
      try {
        await fh.writeFile(bytes);
        if (o.owner) await fh.chown(o.owner.uid, o.owner.gid);
        // The mode asked for, whatever the umask took away.
        if (o.mode !== undefined) await fh.chmod(o.mode);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(at(dir.fd, tmp), at(dir.fd, name));
    } catch (e) {
      await rm(at(dir.fd, tmp), { force: true });
      throw e;
    }
    return true;
  } catch (e) {
    if (e instanceof FileError) throw e;
    throw new FileError(rel, "unwritable", errorMessage(e), { op: "write", in: root, cause: e });
  } finally {
    for (const h of opened.reverse()) await h.close().catch(() => {});
  }
}

/**
 * A regular file's bytes in the open directory `dirFd` (null when absent, not a regular file or
 * over 1 MiB); never follows a symlink or blocks on a FIFO. A directory there is a FileError
 * naming `rel` in `root`.
 */
async function readBeneath(dirFd: number, name: string, rel: string, root: string): Promise<Buffer | null> {
  let fh: FileHandle;
  try {
    fh = await open(at(dirFd, name), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    const code = errnoCode(e);
    if (code === "ENOENT" || code === "ELOOP") return null; // a symlink is replaced, not read
    throw e;
  }
  try {
    const st = await fh.stat();
    if (st.isDirectory()) throw new FileError(rel, "is a directory", `"${name}" is a directory`, { op: "write", in: root });
    if (!st.isFile() || st.size > 1024 * 1024) return null;
    return await fh.readFile();
  } finally {
    await fh.close();
  }
}

/**
 * Adds `line` to the file `<root>/<rel>` unless it has it already, as writeFileBeneath writes
 * (never through a symlink). Returns whether it wrote.
 */
export async function addLineBeneath(root: string, rel: string, line: string, o: BeneathOptions = {}): Promise<boolean> {
  const text = await readFileBeneath(root, rel);
  if (text !== null && text.split("\n").includes(line)) return false;
  const base = text ?? "";
  return writeFileBeneath(root, rel, `${base}${base === "" || base.endsWith("\n") ? "" : "\n"}${line}\n`, o);
}

/** The text of the regular file `<root>/<rel>`, or null; no symlink on the way is followed. */
export async function readFileBeneath(root: string, rel: string): Promise<string | null> {
  const parts = normalize(rel).split("/").filter((p) => p !== "" && p !== ".");
  const name = parts.pop();
  if (name === undefined || parts.includes("..")) return null;
  const opened: FileHandle[] = [];
  try {
    let dir = await open(root, DIR_FLAGS);
    opened.push(dir);
    for (const p of parts) {
      dir = await open(at(dir.fd, p), DIR_FLAGS);
      opened.push(dir);
    }
    return (await readBeneath(dir.fd, name, rel, root))?.toString("utf8") ?? null;
  } catch {
    return null;
  } finally {
    for (const h of opened.reverse()) await h.close().catch(() => {});
  }
}

function whyNot(rel: string, part: string, e: unknown): FileError {
  const code = errnoCode(e);
  if (code === "ENOTDIR" || code === "ELOOP") return new FileError(rel, "not a directory", `"${part}" is a symlink or not a directory`, { op: "write", cause: e });
  return new FileError(rel, "unwritable", `"${part}" ${errorMessage(e)}`, { op: "write", cause: e });
}
