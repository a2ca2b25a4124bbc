import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, lstatSync, mkdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { generateX25519Identity, identityToRecipient } from "age-encryption";
import { SecretError } from "../src/errors.ts";
import { decryptTree, findSecretFiles, plainName, redact, secretValues, serviceKeys } from "../src/secrets.ts";
import { decryptSops } from "../src/sops.ts";
import { encryptSops } from "./sops_fixture.ts";
import { tempDir } from "./helpers.ts";

const scratch = tempDir("pgo-secrets-");
afterAll(() => rmSync(scratch, { recursive: true, force: true }));
let n = 0;
const fresh = (): string => {
  const d = join(scratch, `t${n++}`);
  mkdirSync(d, { recursive: true });
  return d;
};
const owner = { uid: 65534, gid: 65534 };

/** Encrypts with the real age CLI (Debian's age package). */
function ageCli(recipient: string, input: string, out: string, armored = false): void {
  const r = Bun.spawnSync(["age", ...(armored ? ["-a"] : []), "-r", recipient, "-o", out], { stdin: Buffer.from(input) });
  if (r.exitCode !== 0) throw new Error(`age failed: ${r.stderr.toString()}`);
}

describe("serviceKeys()", () => {
  test("makes a service identity once, mode 0600, and gives the same recipient after a restart", async () => {
    const state = fresh();
    const a = await serviceKeys(state);
    const b = await serviceKeys(state);
    expect(a.recipient).toMatch(/^age1[0-9a-z]+$/);
    expect(b.recipient).toBe(a.recipient);
    expect(statSync(join(state, "age-identity.txt")).mode & 0o777).toBe(0o600);
  });

  test("two services get different keys", async () => {
    expect((await serviceKeys(fresh())).recipient).not.toBe((await serviceKeys(fresh())).recipient);
  });

  test("adds the identities of the admin's extra files and names a missing one", async () => {
    const extraId = await generateX25519Identity();
    const f = join(fresh(), "extra.txt");
    writeFileSync(f, `# created\n${extraId}\n`);
    const k = await serviceKeys(fresh(), [f]);
    expect(k.identities).toContain(extraId);
    await expect(serviceKeys(fresh(), ["/nonexistent/keys.txt"])).rejects.toThrow('Cannot read the age identity file "/nonexistent/keys.txt"');
  });
});

describe("plainName()", () => {
  test("maps encrypted names to plain ones and leaves others alone", () => {
    expect(plainName("db.env.age")).toEqual({ plain: "db.env", kind: "age" });
    expect(plainName("conf/app.sops.yaml")).toEqual({ plain: "conf/app.yaml", kind: "sops" });
    expect(plainName("x.sops.env")).toEqual({ plain: "x.env", kind: "sops" });
    expect(plainName("x.sops.json")).toEqual({ plain: "x.json", kind: "sops" });
    expect(plainName(".age")).toBeNull();
    expect(plainName("compose.yaml")).toBeNull();
  });
});

describe("decryptTree() with files made by the age CLI", () => {
  test("decrypts binary and armored files beside themselves, mode 0600, owned by the service user", async () => {
    const state = fresh();
    const keys = await serviceKeys(state);
    const repo = fresh();
    mkdirSync(join(repo, "sub"));
    ageCli(keys.recipient, "DB_PASSWORD=hunter2-very-secret\n", join(repo, "db.env.age"));
    ageCli(keys.recipient, "token-abcdef", join(repo, "sub", "token.age"), true);
    const r = await decryptTree(repo, keys, owner);
    expect(r.files.map((f) => f.plain).sort()).toEqual(["db.env", "sub/token"]);
    expect(readFileSync(join(repo, "db.env"), "utf8")).toBe("DB_PASSWORD=hunter2-very-secret\n");
    expect(readFileSync(join(repo, "sub", "token"), "utf8")).toBe("token-abcdef");
    const st = statSync(join(repo, "db.env"));
    expect(st.mode & 0o777).toBe(0o600);
    expect([st.uid, st.gid]).toEqual([owner.uid, owner.gid]);
    expect(r.values).toContain("hunter2-very-secret");
  });

  test("refuses a file encrypted to another service and writes nothing at all", async () => {
    const ours = await serviceKeys(fresh());
    const theirs = await serviceKeys(fresh());
    const repo = fresh();
    ageCli(ours.recipient, "A=ours-secret\n", join(repo, "a.env.age"));
    ageCli(theirs.recipient, "B=their-secret\n", join(repo, "b.env.age"));
    const e = await decryptTree(repo, ours, owner).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(SecretError);
    expect((e as SecretError).file).toBe("b.env.age");
    expect((e as Error).message).toContain("not encrypted to this service's key");
    expect(existsSync(join(repo, "a.env"))).toBe(false);
    expect(existsSync(join(repo, "b.env"))).toBe(false);
  });

  test("refuses a corrupt file naming it", async () => {
    const keys = await serviceKeys(fresh());
    const repo = fresh();
    writeFileSync(join(repo, "x.age"), "age-encryption.org/v1\n-> X25519 garbage\n--- AAAA\nxxxx");
    await expect(decryptTree(repo, keys, owner)).rejects.toThrow('Cannot decrypt "x.age"');
  });

  test("removes the plain file of an encrypted file that went away", async () => {
    const keys = await serviceKeys(fresh());
    const repo = fresh();
    ageCli(keys.recipient, "S=1234567\n", join(repo, "s.env.age"));
    const first = await decryptTree(repo, keys, owner);
    expect(existsSync(join(repo, "s.env"))).toBe(true);
    rmSync(join(repo, "s.env.age"));
    await decryptTree(repo, keys, owner, first.files.map((f) => f.plain));
    expect(existsSync(join(repo, "s.env"))).toBe(false);
  });

  test("replaces a symlink at the plain name without writing through it", async () => {
    const keys = await serviceKeys(fresh());
    const repo = fresh();
    const victim = join(fresh(), "victim");
    writeFileSync(victim, "untouched");
    symlinkSync(victim, join(repo, "db.env"));
    ageCli(keys.recipient, "P=secret-value\n", join(repo, "db.env.age"));
    await decryptTree(repo, keys, owner);
    expect(readFileSync(victim, "utf8")).toBe("untouched");
    expect(lstatSync(join(repo, "db.env")).isSymbolicLink()).toBe(false);
  });

  test("refuses an encrypted name that is a symlink and never descends a symlinked directory", async () => {
    const keys = await serviceKeys(fresh());
    const outside = fresh();
    ageCli(keys.recipient, "X=outside-secret\n", join(outside, "o.env.age"));
    const repo = fresh();
    symlinkSync(outside, join(repo, "linkdir"));
    expect(await findSecretFiles(repo)).toEqual([]);
    await decryptTree(repo, keys, owner);
    expect(existsSync(join(outside, "o.env"))).toBe(false);
    symlinkSync(join(outside, "o.env.age"), join(repo, "l.env.age"));
    await expect(decryptTree(repo, keys, owner)).rejects.toThrow('Cannot decrypt "l.env.age": it is not a regular file');
  });
});

describe("decryptSops()", () => {
  const tree = { db: { user: "app", password: "s3cr3t-pass" }, port: 5432, debug: false, hosts: ["a.example", "b.example"] };
  for (const format of ["yaml", "json"] as const) {
    test(`decrypts a ${format} file to the same tree, in order`, async () => {
      const id = await generateX25519Identity();
      const text = await encryptSops(tree, format, [await identityToRecipient(id)]);
      const keys = { recipient: "", identities: [id] };
      const repo = fresh();
      writeFileSync(join(repo, `app.sops.${format}`), text);
      await decryptTree(repo, keys, owner);
      const plain = readFileSync(join(repo, `app.${format}`), "utf8");
      const parsed = format === "json" ? JSON.parse(plain) : Bun.YAML.parse(plain);
      expect(parsed).toEqual(tree);
      expect(plain).not.toContain("sops");
      expect(Object.keys(parsed)).toEqual(["db", "port", "debug", "hosts"]);
    });
  }

  test("decrypts a dotenv file", async () => {
    const id = await generateX25519Identity();
    const made = await encryptSops({ DB_PASSWORD: "pa55word-x", API_TOKEN: "tok-123456", EMPTY: "" }, "env", [await identityToRecipient(id)]);
    // As sops writes them: an encrypted comment in place, an empty value left in clear.
    const text = `#ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:comment]\n${made.replace(/^EMPTY=.*$/m, "EMPTY=")}`;
    const r = await decryptSops(text, "x.sops.env", async (enc) => {
      const { Decrypter, armor } = await import("age-encryption");
      const d = new Decrypter();
      d.addIdentity(id);
      return d.decrypt(armor.decode(Buffer.from(enc).toString()));
    });
    expect(r.text).toBe("DB_PASSWORD=pa55word-x\nAPI_TOKEN=tok-123456\nEMPTY=\n");
    expect(r.values).toEqual(["pa55word-x", "tok-123456"]);
  });

  test("refuses a file whose values were swapped (the MAC no longer matches)", async () => {
    const id = await generateX25519Identity();
    const text = await encryptSops({ A: "first-value", B: "second-value" }, "env", [await identityToRecipient(id)]);
    const lines = text.split("\n");
    // Re-encrypting is impossible without the key; dropping a value changes what the MAC covers.
    const tampered = lines.filter((l) => !l.startsWith("B=")).join("\n");
    const repo = fresh();
    writeFileSync(join(repo, "x.sops.env"), tampered);
    await expect(decryptTree(repo, { recipient: "", identities: [id] }, owner)).rejects.toThrow("its MAC does not match");
    expect(existsSync(join(repo, "x.env"))).toBe(false);
  });

  test("refuses a value moved to another key (its key path is authenticated)", async () => {
    const id = await generateX25519Identity();
    const text = await encryptSops({ A: "first-value", B: "second-value" }, "yaml", [await identityToRecipient(id)]);
    const doc = Bun.YAML.parse(text) as Record<string, unknown>;
    const swapped = text.replace(String(doc["A"]), "@@").replace(String(doc["B"]), String(doc["A"])).replace("@@", String(doc["B"]));
    const repo = fresh();
    writeFileSync(join(repo, "x.sops.yaml"), swapped);
    await expect(decryptTree(repo, { recipient: "", identities: [id] }, owner)).rejects.toThrow("fails authentication");
  });

  test("refuses a file encrypted to another recipient", async () => {
    const id = await generateX25519Identity();
    const other = await generateX25519Identity();
    const text = await encryptSops({ A: "v-123456" }, "json", [await identityToRecipient(other)]);
    const repo = fresh();
    writeFileSync(join(repo, "x.sops.json"), text);
    await expect(decryptTree(repo, { recipient: "", identities: [id] }, owner)).rejects.toThrow("not encrypted to this service's key");
  });

  test("refuses YAML aliases instead of expanding them", async () => {
    const repo = fresh();
    writeFileSync(join(repo, "x.sops.yaml"), "a: &a [1, 2]\nb: [*a, *a]\nsops: {}\n");
    await expect(decryptTree(repo, { recipient: "", identities: [await generateX25519Identity()] }, owner)).rejects.toThrow("aliases");
  });
});

describe("redact()", () => {
  test("replaces every secret value and whole line", () => {
    const values = secretValues("DB_PASSWORD=\"hunter2-x\"\n# comment\nTOKEN=abcdefgh\n");
    expect(redact("error near DB_PASSWORD=\"hunter2-x\" and abcdefgh", values)).toBe("error near *** and ***");
    expect(values).not.toContain("# comment");
  });
});
