import { afterAll, beforeAll, expect, test } from "bun:test";
import { createHash, createPrivateKey, sign } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { makeRunner } from "../src/exec.ts";
import { gitDirOf, makeGit } from "../src/git.ts";
import type { Git } from "../src/git.ts";
import { memoryLogger } from "../src/log.ts";
import { addVerified, allowedSigners, anchorOf, commitKeys, judgeCommit, signatureKind, UnknownTrustRoot, wasVerified } from "../src/signatures.ts";
import type { SignatureVerdict } from "../src/signatures.ts";
import { git, tempDir } from "./helpers.ts";
import { writeTree } from "./kit/repo.ts";

const root = tempDir();
afterAll(() => rmSync(root, { recursive: true, force: true }));

const account = { name: "root", uid: 0, gid: 0, groups: [0], home: root };
const g: Git = makeGit(makeRunner({ logger: memoryLogger() }), account, "signed");
const keys: Record<string, string> = {};

beforeAll(() => {
  // Real keys made by ssh-keygen; "rsapem" is an RSA key in PEM form, for a hand-made SHA-1 signature.
  for (const [name, args] of [["ed", ["-t", "ed25519"]], ["ec", ["-t", "ecdsa"]], ["rsa", ["-t", "rsa", "-b", "2048"]], ["other", ["-t", "ed25519"]],
    ["new", ["-t", "ed25519"]], ["rsapem", ["-t", "rsa", "-b", "2048", "-m", "PEM"]]] as const) {
    const f = join(root, `key_${name}`);
    const r = Bun.spawnSync(["ssh-keygen", "-q", "-N", "", "-C", name, "-f", f, ...args]);
    if (r.exitCode !== 0) throw new Error(r.stderr.toString());
    keys[name] = f;
  }
});

const pub = (name: string): string => readFileSync(`${keys[name]}.pub`, "utf8");

/** A repository whose first commit holds `ssh/` with the named keys. */
function repo(name: string, signers: string[]): { dir: string; root: string } {
  const dir = join(root, name);
  mkdirSync(dir, { recursive: true });
  // The git directory lives outside the checkout, where pgod keeps it (gitDirOf); the .git file
  // in the checkout lets the test's own git commands find it.
  mkdirSync(dirname(gitDirOf(dir)), { recursive: true });
  git(dir, "init", "--quiet", "-b", "main", "--separate-git-dir", gitDirOf(dir));
  const first = commit(dir, Object.fromEntries(signers.map((s) => [`ssh/${s}.pub`, pub(s)])));
  return { dir, root: first };
}

/** Commits files (null deletes), signed with the named key (SSH signature) or unsigned. */
function commit(dir: string, files: Record<string, string | null>, signer?: string): string {
  writeTree(dir, files);
  git(dir, "add", "-A");
  const sig = signer === undefined ? [] : ["-c", "gpg.format=ssh", "-c", `user.signingkey=${keys[signer]}`];
  git(dir, ...sig, "commit", "--quiet", "--allow-empty", ...(signer ? ["-S"] : []), "-m", `change ${Math.random()}`);
  return git(dir, "rev-parse", "HEAD");
}

async function judge(dir: string, anchor: string, commit: string): Promise<SignatureVerdict> {
  const file = join(dir, "..", `${dirname(dir).length}-${Math.random()}.allowed`);
  return judgeCommit(g, dir, { anchor, commit, writeSigners: async (t) => (writeFileSync(file, t), file) });
}

test("judgeCommit() accepts commits signed by an ed25519, an ecdsa and an RSA (SHA-2) key from ssh/ of the trust root", async () => {
  const r = repo("types", ["ed", "ec", "rsa"]);
  for (const signer of ["ed", "ec", "rsa"]) {
    const c = commit(r.dir, { "f.txt": signer }, signer);
    const v = await judge(r.dir, r.root, c);
    expect(v).toEqual({ ok: true, signer: expect.stringContaining(`${signer} SHA256:`) });
  }
});

test("judgeCommit() refuses an unsigned commit and a commit signed by a key that is not in ssh/", async () => {
  const r = repo("unknown", ["ed"]);
  const unsigned = commit(r.dir, { "f.txt": "1" });
  expect(await judge(r.dir, r.root, unsigned)).toMatchObject({ ok: false, reason: "unsigned" });
  const stranger = commit(r.dir, { "f.txt": "2" }, "other");
  const v = await judge(r.dir, r.root, stranger);
  expect(v).toMatchObject({ ok: false, reason: "unknown key" });
  // The detail names the signing key's fingerprint, as ssh-keygen -lf prints it.
  const fp = Bun.spawnSync(["ssh-keygen", "-lf", `${keys["other"]}.pub`]).stdout.toString().split(" ")[1]!;
  expect(v.ok ? "" : v.detail).toContain(fp);
});

test("judgeCommit() refuses a commit that adds a key and is signed with that new key (no self-authorisation)", async () => {
  const r = repo("self", ["ed"]);
  const c = commit(r.dir, { "ssh/new.pub": pub("new") }, "new");
  expect(await judge(r.dir, r.root, c)).toMatchObject({ ok: false, reason: "unknown key" });
  // Even a later commit by the new key: ssh/ of the anchor is what counts, not of the commit.
  const later = commit(r.dir, { "f.txt": "x" }, "new");
  expect(await judge(r.dir, r.root, later)).toMatchObject({ ok: false, reason: "unknown key" });
});

test("judgeCommit() follows a rotation: the old key signs the addition of the new one, then only the new key counts", async () => {
  const r = repo("rotate", ["ed"]);
  const rotation = commit(r.dir, { "ssh/new.pub": pub("new"), "ssh/ed.pub": null }, "ed");
  expect(await judge(r.dir, r.root, rotation)).toMatchObject({ ok: true });
  const byNew = commit(r.dir, { "f.txt": "new" }, "new");
  expect(await judge(r.dir, rotation, byNew)).toMatchObject({ ok: true });
  // The old key was removed in the rotation: it no longer verifies after it.
  const byOld = commit(r.dir, { "f.txt": "old" }, "ed");
  expect(await judge(r.dir, byNew, byOld)).toMatchObject({ ok: false, reason: "unknown key" });
});

test("judgeCommit() holds a rewind to an older commit and a commit on another line of history", async () => {
  const r = repo("rewind", ["ed"]);
  const a = commit(r.dir, { "f.txt": "a" }, "ed");
  const b = commit(r.dir, { "f.txt": "b" }, "ed");
  expect(await judge(r.dir, b, a)).toMatchObject({ ok: false, reason: "not a descendant" });
  git(r.dir, "checkout", "--quiet", "-b", "side", r.root);
  const side = commit(r.dir, { "f.txt": "side" }, "ed");
  expect(await judge(r.dir, b, side)).toMatchObject({ ok: false, reason: "not a descendant" });
  // The anchor itself needs no signature.
  expect(await judge(r.dir, b, b)).toEqual({ ok: true, signer: null });
});

test("judgeCommit() accepts unsigned commits in between when the newest one is signed by a trusted key", async () => {
  const r = repo("between", ["ec"]);
  commit(r.dir, { "f.txt": "1" });
  commit(r.dir, { "f.txt": "2" }, "other");
  const top = commit(r.dir, { "f.txt": "3" }, "ec");
  expect(await judge(r.dir, r.root, top)).toMatchObject({ ok: true });
});

test("judgeCommit() throws UnknownTrustRoot for a trust root the repository does not have", async () => {
  const r = repo("noroot", ["ed"]);
  const c = commit(r.dir, { "f.txt": "1" }, "ed");
  const missing = "0123456789abcdef0123456789abcdef01234567";
  await expect(judge(r.dir, missing, c)).rejects.toBeInstanceOf(UnknownTrustRoot);
});

test("judgeCommit() reads keys from the commit, never from the checkout's files", async () => {
  const r = repo("files", ["ed"]);
  const c = commit(r.dir, { "f.txt": "1" }, "other");
  // A container that writes into the checkout cannot add a key.
  writeFileSync(join(r.dir, "ssh", "other.pub"), pub("other"));
  expect(await judge(r.dir, r.root, c)).toMatchObject({ ok: false, reason: "unknown key" });
});

test("commitKeys() skips symlinks, files in subfolders and non-.pub files of ssh/", async () => {
  const r = repo("skips", ["ed"]);
  mkdirSync(join(r.dir, "ssh", "sub"), { recursive: true });
  writeFileSync(join(r.dir, "ssh", "sub", "x.pub"), pub("other"));
  writeFileSync(join(r.dir, "ssh", "notes.txt"), pub("other"));
  Bun.spawnSync(["ln", "-s", `${keys["other"]}.pub`, join(r.dir, "ssh", "link.pub")]);
  const c = commit(r.dir, {});
  const warnings: string[] = [];
  const found = await commitKeys(g, r.dir, c, (m) => warnings.push(m));
  expect(found.map((k) => k.principal)).toEqual(["ed"]);
  expect(warnings.join("\n")).toContain('Skipping "ssh/link.pub"');
  expect(allowedSigners(found)).toBe(`ed namespaces="git" ${pub("ed").split(" ").slice(0, 2).join(" ")}\n`);
});

test("signatureKind() tells SSH signatures from none and from others", () => {
  expect(signatureKind("tree x\nauthor a\n\nmsg\n")).toBe(null);
  expect(signatureKind("tree x\ngpgsig -----BEGIN SSH SIGNATURE-----\n abc\n -----END SSH SIGNATURE-----\n\nmsg\n")).toBe("ssh");
  expect(signatureKind("tree x\ngpgsig -----BEGIN PGP SIGNATURE-----\n abc\n\nmsg\n")).toBe("other");
  // A signature quoted in the message is not a signature.
  expect(signatureKind("tree x\n\ngpgsig -----BEGIN SSH SIGNATURE-----\n")).toBe(null);
});

/** An SSHSIG signature of `message` made here (not by ssh-keygen, which makes no SHA-1 ones). */
function sshsig(keyFile: string, message: Buffer, hash: "sha1" | "sha512", alg: string, namespace = "git"): string {
  const str = (b: Buffer | string): Buffer => {
    const x = Buffer.from(b);
    const n = Buffer.alloc(4);
    n.writeUInt32BE(x.length);
    return Buffer.concat([n, x]);
  };
  const blob = Buffer.from(readFileSync(`${keyFile}.pub`, "utf8").split(" ")[1]!, "base64");
  const h = createHash("sha512").update(message).digest();
  const signed = Buffer.concat([Buffer.from("SSHSIG"), str(namespace), str(""), str("sha512"), str(h)]);
  const raw = sign(hash, signed, createPrivateKey(readFileSync(keyFile)));
  const sig = Buffer.concat([Buffer.from("SSHSIG"), Buffer.from([0, 0, 0, 1]), str(blob), str(namespace), str(""), str("sha512"), str(Buffer.concat([str(alg), str(raw)]))]);
  return `-----BEGIN SSH SIGNATURE-----\n${sig.toString("base64").match(/.{1,70}/g)!.join("\n")}\n-----END SSH SIGNATURE-----`;
}

/** Writes a commit object like `base` but signed with `signature`; returns its id. */
function withSignature(dir: string, base: string, signature: string): string {
  const payload = git(dir, "cat-file", "commit", base) + "\n";
  const split = payload.indexOf("\n\n");
  const object = `${payload.slice(0, split)}\ngpgsig ${signature.replace(/\n/g, "\n ")}${payload.slice(split)}`;
  const tmp = join(dir, "..", `object-${Math.random()}`);
  writeFileSync(tmp, object);
  return git(dir, "hash-object", "-t", "commit", "-w", tmp);
}

test("judgeCommit() refuses an RSA signature made with SHA-1 (ssh-rsa), and accepts the same one made with SHA-512", async () => {
  const r = repo("sha1", ["rsapem"]);
  const base = commit(r.dir, { "f.txt": "1" });
  const payload = Buffer.from(git(r.dir, "cat-file", "commit", base) + "\n");
  const sha1 = withSignature(r.dir, base, sshsig(keys["rsapem"]!, payload, "sha1", "ssh-rsa"));
  const sha512 = withSignature(r.dir, base, sshsig(keys["rsapem"]!, payload, "sha512", "rsa-sha2-512"));
  // The hand-made signature is well formed: the SHA-512 twin verifies.
  expect(await judge(r.dir, r.root, sha512)).toMatchObject({ ok: true });
  const v = await judge(r.dir, r.root, sha1);
  expect(v).toMatchObject({ ok: false, reason: "bad signature" });
  expect(v.ok ? "" : v.detail).toContain("ssh-rsa");
});

test("anchorOf(), wasVerified() and addVerified() keep what verified under one trust root, bounded, and start over under another", () => {
  const [r1, r2, a, b] = ["1", "2", "a", "b"].map((c) => c.repeat(40)) as [string, string, string, string];
  expect(anchorOf(undefined, r1)).toBe(r1);
  const v = addVerified(addVerified(undefined, r1, a), r1, b);
  expect(v).toEqual({ root: r1, last: b, commits: [a, b] });
  expect(anchorOf(v, r1)).toBe(b);
  expect([wasVerified(v, r1, a), wasVerified(v, r1, r1), wasVerified(v, r1, r2)]).toEqual([true, true, false]);
  // A new trust_root in the config: nothing verified under the old one counts.
  expect(anchorOf(v, r2)).toBe(r2);
  expect(wasVerified(v, r2, a)).toBe(false);
  expect(addVerified(v, r2, a)).toEqual({ root: r2, last: a, commits: [a] });
  let many = addVerified(undefined, r1, a);
  for (let i = 0; i < 250; i++) many = addVerified(many, r1, i.toString(16).padStart(40, "0"));
  expect(many.commits).toHaveLength(200);
  expect(many.commits).not.toContain(a);
});

test("judgeCommit() refuses a trusted key's signature moved onto another commit, and one made for another namespace", async () => {
  const r = repo("forged", ["ed", "rsapem"]);
  const signed = commit(r.dir, { "f.txt": "reviewed" }, "ed");
  const evil = commit(r.dir, { "f.txt": "evil" });
  const header = /^gpgsig (-----BEGIN SSH SIGNATURE-----\n(?: .*\n)*? -----END SSH SIGNATURE-----)$/m.exec(git(r.dir, "cat-file", "commit", signed) + "\n");
  const copied = withSignature(r.dir, evil, header![1]!.replace(/\n /g, "\n"));
  expect(await judge(r.dir, r.root, copied)).toMatchObject({ ok: false, reason: "bad signature" });
  // A signature by a trusted key over the right bytes, but for ssh-keygen's "file" namespace.
  const payload = Buffer.from(git(r.dir, "cat-file", "commit", evil) + "\n");
  const otherNamespace = withSignature(r.dir, evil, sshsig(keys["rsapem"]!, payload, "sha512", "rsa-sha2-512", "file"));
  expect(await judge(r.dir, r.root, otherNamespace)).toMatchObject({ ok: false });
  const sameNamespace = withSignature(r.dir, evil, sshsig(keys["rsapem"]!, payload, "sha512", "rsa-sha2-512"));
  expect(await judge(r.dir, r.root, sameNamespace)).toMatchObject({ ok: true });
});
