import { afterAll, describe, expect, test } from "bun:test";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileError } from "../src/errors.ts";
import { readCapped, writeFileBeneath } from "../src/files.ts";

const dir = mkdtempSync(join(tmpdir(), "pgo-files-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** What readCapped threw, as the fields a caller decides on. */
async function refusal(path: string, max = 16): Promise<{ problem: string; path: string; message: string }> {
  try {
    await readCapped(path, max);
  } catch (e) {
    if (!(e instanceof FileError)) throw e;
    return { problem: e.problem, path: e.path, message: e.message };
  }
  throw new Error(`readCapped read "${path}"`);
}

describe("readCapped()", () => {
  test("reads a regular file of up to the cap, exactly", async () => {
    writeFileSync(join(dir, "ok"), "0123456789abcdef");
    expect(Buffer.from(await readCapped(join(dir, "ok"), 16)).toString()).toBe("0123456789abcdef");
  });

  test("refuses a symlink, even to a readable file, naming the path", async () => {
    writeFileSync(join(dir, "target"), "x");
    symlinkSync(join(dir, "target"), join(dir, "link"));
    const p = join(dir, "link");
    expect(await refusal(p)).toEqual({ problem: "symlink", path: p, message: `Cannot read "${p}": it is a symlink (symlinks are not followed)` });
  });

  test("refuses a FIFO without blocking on it, and a directory", async () => {
    const fifo = join(dir, "fifo");
    execFileSync("mkfifo", [fifo]);
    expect(await refusal(fifo)).toEqual({ problem: "not a regular file", path: fifo, message: `Cannot read "${fifo}": it is not a regular file` });
    mkdirSync(join(dir, "sub"));
    expect((await refusal(join(dir, "sub"))).problem).toBe("not a regular file");
  });

  test("refuses a file over the cap with the path and the cap in the message", async () => {
    const p = join(dir, "big");
    writeFileSync(p, "x".repeat(17));
    expect(await refusal(p)).toEqual({ problem: "too large", path: p, message: `Cannot read "${p}": it is larger than 16 bytes` });
  });

  test("says a missing file is missing", async () => {
    expect((await refusal(join(dir, "nothing"))).problem).toBe("missing");
  });
});

describe("writeFileBeneath()", () => {
  test("refuses a directory on the way that is a symlink with a FileError naming it", async () => {
    const root = join(dir, "root");
    mkdirSync(root);
    symlinkSync(dir, join(root, "up"));
    const e = await writeFileBeneath(root, "up/x", "text").catch((x: unknown) => x);
    expect(e).toBeInstanceOf(FileError);
    expect((e as FileError).message).toBe('Cannot write "up/x": "up" is a symlink or not a directory');
  });

  test("writes the same text again only when asked to, resetting the mode", async () => {
    const root = join(dir, "root2");
    mkdirSync(root);
    expect(await writeFileBeneath(root, "f", new TextEncoder().encode("same"), { mode: 0o600 })).toBe(true);
    expect(await writeFileBeneath(root, "f", "same", { mode: 0o600 })).toBe(false);
    execFileSync("chmod", ["0644", join(root, "f")]);
    expect(await writeFileBeneath(root, "f", "same", { mode: 0o600, rewrite: true })).toBe(true);
    expect(statSync(join(root, "f")).mode & 0o777).toBe(0o600);
  });
});
