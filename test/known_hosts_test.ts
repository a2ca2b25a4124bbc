import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { exists, mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { addHostKey, checkHostKey, hostKeyName, matchHostKey, type HostKey } from "../src/known_hosts.ts";
import { runSync as sh } from "./kit/process.ts";

let dir: string;
let keyA: HostKey;
let keyB: Buffer;
let lineA: string; // "ssh-ed25519 AAAA..." of key A

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "pgo-kh-"));
  for (const n of ["a", "b"]) sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", join(dir, n)]);
  const a = (await readFile(join(dir, "a.pub"), "utf8")).split(" ");
  const b = (await readFile(join(dir, "b.pub"), "utf8")).split(" ");
  lineA = `${a[0]} ${a[1]}`;
  keyA = { host: "pgo.example.org", port: 2222, algo: a[0]!, blob: Buffer.from(a[1]!, "base64") };
  keyB = Buffer.from(b[1]!, "base64");
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("hostKeyName()", () => {
  test("uses [host]:port except on port 22, and lower case", () => {
    expect(hostKeyName("PGO.example.org", 2222)).toBe("[pgo.example.org]:2222");
    expect(hostKeyName("pgo.example.org", 22)).toBe("pgo.example.org");
    expect(hostKeyName("::1", 2222)).toBe("[::1]:2222");
  });
});

describe("matchHostKey()", () => {
  test("knows a key on a [host]:port line and not the same host on another port", () => {
    expect(matchHostKey(`[pgo.example.org]:2222 ${lineA}\n`, keyA)).toEqual({ status: "known", line: 1 });
    expect(matchHostKey(`[pgo.example.org]:2200 ${lineA}\n`, keyA).status).toBe("unknown");
    expect(matchHostKey(`pgo.example.org ${lineA}\n`, keyA).status).toBe("unknown");
    expect(matchHostKey(`pgo.example.org ${lineA}\n`, { ...keyA, port: 22 }).status).toBe("known");
  });

  test("reports a changed key with the line that holds the old one", () => {
    const text = `# comment\nother.host ${lineA}\n[pgo.example.org]:2222 ssh-ed25519 ${keyB.toString("base64")}\n`;
    expect(matchHostKey(text, keyA)).toEqual({ status: "changed", line: 3 });
  });

  test("a line with the right key wins over another line with an old key", () => {
    const text = `[pgo.example.org]:2222 ssh-ed25519 ${keyB.toString("base64")}\n[pgo.example.org]:2222 ${lineA}\n`;
    expect(matchHostKey(text, keyA)).toEqual({ status: "known", line: 2 });
  });

  test("understands comma-separated host lists, wildcards and negation", () => {
    expect(matchHostKey(`a.example.org,[pgo.example.org]:2222,10.0.0.1 ${lineA}`, keyA).status).toBe("known");
    expect(matchHostKey(`[*.example.org]:2222 ${lineA}`, keyA).status).toBe("known");
    expect(matchHostKey(`[pgo.example.or?]:2222 ${lineA}`, keyA).status).toBe("known");
    expect(matchHostKey(`[*.example.org]:2222,![pgo.example.org]:2222 ${lineA}`, keyA).status).toBe("unknown");
  });

  test("honours @revoked and ignores @cert-authority lines", () => {
    expect(matchHostKey(`@revoked * ${lineA}\n[pgo.example.org]:2222 ${lineA}\n`, keyA)).toEqual({ status: "revoked", line: 1 });
    expect(matchHostKey(`@cert-authority *.example.org ${lineA}\n`, keyA).status).toBe("unknown");
  });
});

describe("checkHostKey() and addHostKey()", () => {
  test("a missing file knows no host", async () => {
    expect(await checkHostKey(join(dir, "nope", "known_hosts"), keyA)).toEqual({ status: "unknown" });
  });

  test("addHostKey() creates the file (0600) and the key is then known, but never a missing folder", async () => {
    const file = join(dir, "home", ".ssh", "known_hosts");
    await expect(addHostKey(file, keyA)).rejects.toThrow(/ENOENT|no such file/i);
    expect(await exists(join(dir, "home"))).toBe(false);
    await mkdir(join(dir, "home", ".ssh"), { recursive: true });
    await addHostKey(file, keyA);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(await readFile(file, "utf8")).toBe(`[pgo.example.org]:2222 ${lineA}\n`);
    expect((await checkHostKey(file, keyA)).status).toBe("known");
    expect((await checkHostKey(file, { ...keyA, blob: keyB })).status).toBe("changed");
  });

  test("addHostKey() starts a new line when the file does not end with one", async () => {
    const file = join(dir, "no-newline");
    await writeFile(file, `other.host ${lineA}`);
    await addHostKey(file, keyA);
    expect((await readFile(file, "utf8")).split("\n")).toEqual([`other.host ${lineA}`, `[pgo.example.org]:2222 ${lineA}`, ""]);
  });

  test("checkHostKey() finds entries that ssh-keygen -H has hashed", async () => {
    const file = join(dir, "hashed");
    await writeFile(file, `[pgo.example.org]:2222 ${lineA}\nother.host ${lineA}\n`);
    sh(["ssh-keygen", "-q", "-H", "-f", file]);
    const text = await readFile(file, "utf8");
    expect(text).toStartWith("|1|");
    expect(text).not.toContain("pgo.example.org");
    expect(await checkHostKey(file, keyA)).toEqual({ status: "known", line: 1 });
    expect((await checkHostKey(file, { ...keyA, blob: keyB })).status).toBe("changed");
    expect((await checkHostKey(file, { ...keyA, host: "third.host" })).status).toBe("unknown");
  });

  test("OpenSSH finds what addHostKey() wrote", async () => {
    const file = join(dir, "for-openssh");
    await addHostKey(file, keyA);
    expect(sh(["ssh-keygen", "-F", "[pgo.example.org]:2222", "-f", file])).toContain(lineA);
  });
});
