/**
 * Which commits may be deployed when a service sets `verify = "commits"`: a commit must descend
 * from the last verified commit (before the first one, from `trust_root`) and carry an SSH
 * signature by a key in the `ssh/` folder of that commit. Keys are read from git's object store,
 * never from the checkout's files; the signature is checked by git (`git verify-commit`, which
 * runs `ssh-keygen -Y verify`) against an allowed-signers file made from those keys.
 */
import { chmod, mkdir } from "node:fs/promises";
import { dirname } from "node:path";
import { writeFileAtomic } from "./files.ts";
import { parseAuthorizedKeys, MAX_KEY_FILE_BYTES, MAX_KEY_FILES } from "./keys.ts";
import type { PublicKey } from "./keys.ts";
import type { Git } from "./git.ts";
import { MAX_VERIFIED } from "./state.ts";
import type { Verified } from "./state.ts";

/** Why a commit did not verify. */
export type UnverifiedReason = "unsigned" | "unknown key" | "bad signature" | "not a descendant";

/** The verdict on one commit. */
export type SignatureVerdict =
  | { ok: true; signer: string | null }
  | { ok: false; reason: UnverifiedReason; detail: string };

/** What `judgeCommit` needs besides git. */
export interface JudgeOptions {
  /** The last verified commit, or the trust root before the first one. */
  anchor: string;
  /** The commit to judge. */
  commit: string;
  /** Writes the allowed-signers text where git (as the service user) can read it; returns the path. */
  writeSigners: (text: string) => Promise<string>;
  warn?: (message: string) => void;
}

/** Thrown when the trust anchor is not a commit of the repository: nothing can be verified. */
export class UnknownTrustRoot extends Error {
  constructor(readonly anchor: string, what: string) {
    super(`${what} ${anchor} is not a commit of the repository`);
    this.name = "UnknownTrustRoot";
  }
}

/** Judges whether `commit` may be deployed after `anchor` (see the module's comment). */
export async function judgeCommit(git: Git, dir: string, o: JudgeOptions, what = "the trust root"): Promise<SignatureVerdict> {
  if ((await git.resolveCommit(dir, o.anchor)) !== o.anchor) throw new UnknownTrustRoot(o.anchor, what);
  if (o.commit === o.anchor) return { ok: true, signer: null };
  if (!(await git.isAncestor(dir, o.anchor, o.commit))) {
    return { ok: false, reason: "not a descendant", detail: `commit ${o.commit.slice(0, 12)} does not descend from the last verified commit ${o.anchor.slice(0, 12)}` };
  }
  const sig = signatureKind(await git.commitObject(dir, o.commit));
  if (sig === null) return { ok: false, reason: "unsigned", detail: `commit ${o.commit.slice(0, 12)} is not signed` };
  if (sig !== "ssh") return { ok: false, reason: "bad signature", detail: `commit ${o.commit.slice(0, 12)} has a signature that is not an SSH signature` };
  const keys = await commitKeys(git, dir, o.anchor, o.warn);
  if (keys.length === 0) {
    return { ok: false, reason: "unknown key", detail: `the last verified commit ${o.anchor.slice(0, 12)} has no keys in "ssh/"` };
  }
  const file = await o.writeSigners(allowedSigners(keys));
  const r = await git.verifyCommit(dir, o.commit, file);
  const fp = /\b(SHA256:[A-Za-z0-9+/]+)/.exec(r.output)?.[1] ?? null;
  if (r.good) {
    const principal = /signature for (\S+) with/.exec(r.output)?.[1] ?? null;
    return { ok: true, signer: [principal, fp].filter((x) => x !== null).join(" ") || null };
  }
  if (/No principal matched/i.test(r.output)) {
    return { ok: false, reason: "unknown key", detail: `commit ${o.commit.slice(0, 12)} is signed by ${fp ?? "a key"} that is not in "ssh/" of the last verified commit ${o.anchor.slice(0, 12)}` };
  }
  return { ok: false, reason: "bad signature", detail: `commit ${o.commit.slice(0, 12)} has a signature that does not verify: ${lastLine(r.output)}` };
}

/** "ssh", "other" or null (no signature) for a raw commit object's `gpgsig` header. */
export function signatureKind(object: string): "ssh" | "other" | null {
  const headers = object.slice(0, object.indexOf("\n\n") >= 0 ? object.indexOf("\n\n") : object.length);
  const m = /^gpgsig(?:-sha256)? (.*)$/m.exec(headers);
  if (!m) return null;
  return m[1]!.trim() === "-----BEGIN SSH SIGNATURE-----" ? "ssh" : "other";
}

/** A key from `ssh/` with the principal name it gets in the allowed-signers file. */
export interface SigningKey extends PublicKey {
  principal: string;
}

/**
 * The keys in the `ssh/` folder of `commit`, read from the object store with the same limits and
 * parser as pgoctl's keys: `*.pub` regular files (no symlinks) of at most 64 KiB, at most 1000 of them.
 */
export async function commitKeys(git: Git, dir: string, commit: string, warn: (m: string) => void = () => {}): Promise<SigningKey[]> {
  const entries = (await git.listTree(dir, commit, "ssh"))
    .filter((e) => e.path.startsWith("ssh/") && e.path.endsWith(".pub") && !e.path.slice(4).includes("/"))
    .sort((a, b) => (a.path < b.path ? -1 : 1));
  const keys: SigningKey[] = [];
  for (const [i, e] of entries.entries()) {
    if (i >= MAX_KEY_FILES) {
      warn(`Reading only the first ${MAX_KEY_FILES} of ${entries.length} key files in "ssh/" of ${commit.slice(0, 12)}`);
      break;
    }
    if (e.type !== "blob" || (e.mode !== "100644" && e.mode !== "100755")) {
      warn(`Skipping "${e.path}" of ${commit.slice(0, 12)}: not a regular file`);
      continue;
    }
    if (e.size > MAX_KEY_FILE_BYTES) {
      warn(`Skipping "${e.path}" of ${commit.slice(0, 12)}: larger than ${MAX_KEY_FILE_BYTES} bytes`);
      continue;
    }
    const text = await git.show(dir, commit, e.path);
    if (text === null) continue;
    const name = e.path.slice(4, -4);
    const base = /^[A-Za-z0-9._-]{1,64}$/.test(name) ? name : `key${i + 1}`;
    parseAuthorizedKeys(text, (m) => warn(`${e.path}: ${m}`)).forEach((k, n) => keys.push({ ...k, principal: n === 0 ? base : `${base}.${n + 1}` }));
  }
  return keys;
}

/** The allowed-signers text for `keys`: each key may sign git commits, under its file's name. */
export function allowedSigners(keys: readonly SigningKey[]): string {
  // Options such as from= or expiry-time= are about logins, not signatures: they are left out.
  return keys.map((k) => `${k.principal} namespaces="git" ${k.algo} ${k.blob.toString("base64")}\n`).join("");
}

/** The text for status and history: the reason and its detail. */
export function describe(v: Extract<SignatureVerdict, { ok: false }>): string {
  return `${v.reason}: ${v.detail}`;
}

/** The commit the next one is judged from: the last verified one under `root`, else `root` itself. */
export function anchorOf(v: Verified | undefined, root: string): string {
  return v !== undefined && v.root === root ? v.last : root;
}

/** Whether `commit` is the trust root or verified under it (what a rollback may go back to). */
export function wasVerified(v: Verified | undefined, root: string, commit: string): boolean {
  return commit === root || (v !== undefined && v.root === root && v.commits.includes(commit));
}

/** The record after the checkout moved to the verified `commit`: it is the new anchor. */
export function addVerified(v: Verified | undefined, root: string, commit: string): Verified {
  const commits = v !== undefined && v.root === root ? v.commits.filter((c) => c !== commit) : [];
  return { root, last: commit, commits: [...commits, commit].slice(-MAX_VERIFIED) };
}

/**
 * A `writeSigners` for judgeCommit that writes `path` atomically: root's file in a folder of mode
 * 0755, readable by the service user who runs git (public keys only).
 */
export function signersWriter(path: string): (text: string) => Promise<string> {
  return async (text) => {
    await mkdir(dirname(path), { recursive: true });
    await chmod(dirname(path), 0o755);
    await writeFileAtomic(path, text, 0o644);
    return path;
  };
}

function lastLine(s: string): string {
  return s.trim().split("\n").at(-1) ?? "";
}
