import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fingerprint, keyAllows, keysEqual, parseAuthorizedKeys, readServiceKeys } from "../src/keys.ts";
import { runSync as sh } from "./kit/process.ts";

let dir: string;
const pub: Record<string, string> = {};

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "pgo-keys-"));
  for (const [name, args] of [
    ["ed1", ["-t", "ed25519"]],
    ["ed2", ["-t", "ed25519"]],
    ["ecdsa", ["-t", "ecdsa", "-b", "256"]],
    ["rsa", ["-t", "rsa", "-b", "1024"]],
  ] as const) {
    sh(["ssh-keygen", "-q", ...args, "-N", "", "-C", `${name}@test`, "-f", join(dir, name)]);
    pub[name] = (await Bun.file(join(dir, `${name}.pub`)).text()).trim();
  }
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const blobOf = (line: string): Buffer => Buffer.from(line.split(" ")[1]!, "base64");

describe("parseAuthorizedKeys()", () => {
  test("reads ed25519, ecdsa and rsa keys with their comments", () => {
    const keys = parseAuthorizedKeys(`${pub["ed1"]}\n${pub["ecdsa"]}\n${pub["rsa"]}\n`);
    expect(keys.map((k) => [k.algo, k.comment])).toEqual([
      ["ssh-ed25519", "ed1@test"],
      ["ecdsa-sha2-nistp256", "ecdsa@test"],
      ["ssh-rsa", "rsa@test"],
    ]);
    expect(keys[0]!.blob.equals(blobOf(pub["ed1"]!))).toBe(true);
  });

  test("reads an options prefix, quoted values with spaces and commas included, and keeps what pgod enforces", () => {
    const text = [
      `restrict,command="echo hi, there \\"you\\"",from="10.0.0.0/8,!10.1.1.1" ${pub["ed1"]}`,
      `no-pty ${pub["ed2"]}`,
      `EXPIRY-TIME="20300102Z",No-Pty ${pub["ecdsa"]}`,
    ].join("\n");
    const keys = parseAuthorizedKeys(text);
    expect(keys.map((k) => k.comment)).toEqual(["ed1@test", "ed2@test", "ecdsa@test"]);
    expect(keys[0]!.blob.equals(blobOf(pub["ed1"]!))).toBe(true);
    expect(keys.map((k) => k.options)).toEqual([
      { command: 'echo hi, there "you"', from: ["10.0.0.0/8", "!10.1.1.1"] },
      undefined,
      { expiresAt: Date.UTC(2030, 0, 2) },
    ]);
  });

  test("skips, with a warning naming the line, a certificate authority, an unknown option and a malformed value", () => {
    const said: string[] = [];
    const text = [
      `cert-authority ${pub["ed1"]}`,
      `no-such-option ${pub["ed2"]}`,
      `from=10.0.0.1 ${pub["rsa"]}`,
      `expiry-time="tomorrow" ${pub["ecdsa"]}`,
      `command="unterminated ${pub["ed1"]}`,
      `from="127.0.0.1" ${pub["ed2"]}`,
    ].join("\n");
    const keys = parseAuthorizedKeys(text, (m) => said.push(m));
    expect(keys.map((k) => k.comment)).toEqual(["ed2@test"]);
    expect(said).toEqual([
      "Skipping the key on line 1: it is a certificate authority (pgod takes no certificates)",
      'Skipping the key on line 2: unknown option "no-such-option"',
      'Skipping the key on line 3: the value of option "from" is not in double quotes',
      'Skipping the key on line 4: option "expiry-time" is not YYYYMMDD[HHMM[SS]][Z]: "tomorrow"',
    ]);
  });

  test("skips blank lines, comments and garbage, and tolerates CRLF line ends", () => {
    const text = ["", "   ", "# a comment", "hello world", "ssh-ed25519", `${pub["ed1"]}\r`, "ssh-ed25519 !!!notbase64", "\t"].join("\n");
    const keys = parseAuthorizedKeys(text);
    expect(keys).toHaveLength(1);
    expect(keys[0]!.comment).toBe("ed1@test");
  });

  test("rejects a key whose embedded type differs from the type written before it", () => {
    const blob = pub["ed1"]!.split(" ")[1]!;
    expect(parseAuthorizedKeys(`ssh-rsa ${blob} liar`)).toEqual([]);
    expect(parseAuthorizedKeys(`ecdsa-sha2-nistp384 ${pub["ecdsa"]!.split(" ")[1]} liar`)).toEqual([]);
  });

  test("rejects a truncated blob and a blob with trailing bytes", () => {
    const blob = blobOf(pub["ed1"]!);
    const short = blob.subarray(0, blob.length - 3).toString("base64");
    const long = Buffer.concat([blob, Buffer.from([0, 0, 0, 1, 65])]).toString("base64");
    expect(parseAuthorizedKeys(`ssh-ed25519 ${short}\nssh-ed25519 ${long}`)).toEqual([]);
  });

  test("skips key types the server cannot verify", () => {
    const sk = Buffer.alloc(4 + 26);
    sk.writeUInt32BE(26, 0);
    sk.write("sk-ssh-ed25519@openssh.com", 4);
    expect(parseAuthorizedKeys(`sk-ssh-ed25519@openssh.com ${sk.toString("base64")} x`)).toEqual([]);
  });
});

describe("readServiceKeys()", () => {
  test("gives no keys when the checkout has no ssh folder", async () => {
    const co = join(dir, "co-missing");
    await mkdir(co, { recursive: true });
    expect(await readServiceKeys(co)).toEqual([]);
    expect(await readServiceKeys(join(dir, "does-not-exist"))).toEqual([]);
  });

  test("reads every key line of every *.pub file and ignores other files", async () => {
    const co = join(dir, "co-plain");
    await mkdir(join(co, "ssh"), { recursive: true });
    await writeFile(join(co, "ssh", "a.pub"), `${pub["ed1"]}\n${pub["rsa"]}\n`);
    await writeFile(join(co, "ssh", "b.pub"), `${pub["ecdsa"]}`);
    await writeFile(join(co, "ssh", "id_c"), `${pub["ed2"]}\n`);
    await writeFile(join(co, "ssh", "README"), "not keys");
    const keys = await readServiceKeys(co);
    expect(keys.map((k) => k.comment)).toEqual(["ed1@test", "rsa@test", "ecdsa@test"]);
  });

  test("does not follow a symlinked key file or a symlinked ssh folder", async () => {
    const outside = join(dir, "outside");
    await mkdir(outside, { recursive: true });
    await writeFile(join(outside, "x.pub"), `${pub["ed2"]}\n`);

    const co = join(dir, "co-links");
    await mkdir(join(co, "ssh"), { recursive: true });
    await writeFile(join(co, "ssh", "real.pub"), `${pub["ed1"]}\n`);
    await symlink(join(outside, "x.pub"), join(co, "ssh", "link.pub"));
    const warnings: string[] = [];
    const keys = await readServiceKeys(co, { warn: (m) => warnings.push(m) });
    expect(keys.map((k) => k.comment)).toEqual(["ed1@test"]);
    expect(warnings.join("\n")).toContain("link.pub");

    const co2 = join(dir, "co-dirlink");
    await mkdir(co2, { recursive: true });
    await symlink(outside, join(co2, "ssh"));
    expect(await readServiceKeys(co2)).toEqual([]);
  });

  test("skips files over the size cap and reads no more files than the count cap", async () => {
    const co = join(dir, "co-caps");
    await mkdir(join(co, "ssh"), { recursive: true });
    await writeFile(join(co, "ssh", "big.pub"), `${pub["ed2"]}\n${"#".repeat(70 * 1024)}\n`);
    await writeFile(join(co, "ssh", "k1.pub"), `${pub["ed1"]}\n`);
    await writeFile(join(co, "ssh", "k2.pub"), `${pub["ecdsa"]}\n`);
    expect((await readServiceKeys(co)).map((k) => k.comment)).toEqual(["ed1@test", "ecdsa@test"]);
    expect((await readServiceKeys(co, { maxFiles: 2 })).map((k) => k.comment)).toEqual(["ed1@test"]);
  });

  test("skips a FIFO named like a key file instead of blocking on it", async () => {
    const co = join(dir, "co-fifo");
    await mkdir(join(co, "ssh"), { recursive: true });
    sh(["mkfifo", join(co, "ssh", "pipe.pub")]);
    await writeFile(join(co, "ssh", "z.pub"), `${pub["ed1"]}\n`);
    expect((await readServiceKeys(co)).map((k) => k.comment)).toEqual(["ed1@test"]);
  });
});

describe("keysEqual() and fingerprint()", () => {
  test("keysEqual() compares type and blob, not the comment", () => {
    const [a] = parseAuthorizedKeys(pub["ed1"]!);
    const [b] = parseAuthorizedKeys(`${pub["ed1"]!.split(" ").slice(0, 2).join(" ")} other comment`);
    const [c] = parseAuthorizedKeys(pub["ed2"]!);
    expect(keysEqual(a!, b!)).toBe(true);
    expect(keysEqual(a!, c!)).toBe(false);
    expect(keysEqual(a!, { algo: "ssh-rsa", blob: a!.blob })).toBe(false);
  });

  test("fingerprint() gives what ssh-keygen -l prints", () => {
    for (const name of ["ed1", "rsa", "ecdsa"]) {
      const want = sh(["ssh-keygen", "-l", "-E", "sha256", "-f", join(dir, `${name}.pub`)]).split(" ")[1];
      expect(fingerprint(blobOf(pub[name]!))).toBe(want!);
    }
  });
});

describe("keyAllows()", () => {
  const key = (options?: object) => ({ algo: "ssh-ed25519", blob: Buffer.from("k"), comment: "", ...(options ? { options } : {}) });
  const at = (ip: string, now = 0) => ({ ip, now });

  test("a line without options lets anyone in; from= needs a matching address, as OpenSSH matches it", () => {
    expect(keyAllows(key(), at(""))).toBe(true);
    const k = key({ from: ["192.0.2.*", "10.0.0.0/8", "2001:db8::/32", "!10.6.6.6"] });
    expect(["192.0.2.44", "10.200.1.1", "2001:db8::7", "::ffff:10.1.1.1"].map((ip) => keyAllows(k, at(ip)))).toEqual([true, true, true, true]);
    expect(["192.0.3.1", "10.6.6.6", "2001:db9::1", "", "example.org"].map((ip) => keyAllows(k, at(ip)))).toEqual([false, false, false, false, false]);
    // Host names and malformed blocks never match: pgod does no DNS.
    expect(keyAllows(key({ from: ["*.example.org", "10.0.0.0/99"] }), at("10.0.0.1"))).toBe(false);
    expect(keyAllows(key({ from: ["127.0.0.?"] }), at("127.0.0.1"))).toBe(true);
  });

  test("an expired line lets nobody in", () => {
    const k = key({ expiresAt: 1000 });
    expect(keyAllows(k, at("127.0.0.1", 999))).toBe(true);
    expect(keyAllows(k, at("127.0.0.1", 1000))).toBe(false);
  });
});
