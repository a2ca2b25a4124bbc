/**
 * Secrets committed encrypted to a service: `NAME.age` files (age, X25519) and SOPS files
 * (`*.sops.env|yaml|yml|json`) are decrypted, before docker compose reads anything, to the plain
 * name beside them: mode 0600, owned by the service user, never shown to git. Each service has
 * its own age identity in pgod's state directory, so one team can never decrypt another's files.
 */
import { lstat, mkdir, readdir, readFile, rm } from "node:fs/promises";
import { basename, dirname, join, relative, sep } from "node:path";
import { armor, Decrypter, generateX25519Identity, identityToRecipient } from "age-encryption";
import { errnoCode, errorMessage, FileError, SecretError } from "./errors.ts";
import { readCapped, writeFileAtomic, writeFileBeneath } from "./files.ts";
import { decryptSops, isSopsName, plainSopsName } from "./sops.ts";

/** One service's age identities: its own (first) and any the admin configured. */
export interface ServiceKeys {
  /** `age1…`, the recipient teams encrypt to. */
  recipient: string;
  identities: string[];
}

const IDENTITY_FILE = "age-identity.txt";
/** Encrypted files larger than this are refused (a secret is small; this bounds memory). */
export const MAX_SECRET_BYTES = 1024 * 1024;
/** At most this many encrypted files per tree. */
export const MAX_SECRET_FILES = 200;

/**
 * The service's own identity from `<stateDir>/age-identity.txt` (root's alone, mode 0600),
 * made on first use; plus the identities in the admin's `extra` files.
 */
export async function serviceKeys(stateDir: string, extra: readonly string[] = []): Promise<ServiceKeys> {
  const file = join(stateDir, IDENTITY_FILE);
  let own: [string, ...string[]] | null = await readIdentityFile(file).catch((e: unknown) => {
    if (errnoCode(e) === "ENOENT") return null;
    throw e;
  });
  if (own === null) {
    await mkdir(stateDir, { recursive: true, mode: 0o700 });
    const id = await generateX25519Identity();
    const rcpt = await identityToRecipient(id);
    await writeFileAtomic(file, `# age identity of this pgo service; public key: ${rcpt}\n${id}\n`, 0o600);
    own = [id];
  }
  const identities = [...own];
  for (const f of extra) {
    try {
      identities.push(...(await readIdentityFile(f)));
    } catch (e) {
      throw new SecretError(f, `Cannot read the age identity file "${f}": ${errorMessage(e)}`, { cause: e });
    }
  }
  return { recipient: await identityToRecipient(own[0]), identities };
}

async function readIdentityFile(path: string): Promise<[string, ...string[]]> {
  const text = await readFile(path, "utf8");
  const [first, ...rest] = text.split("\n").map((l) => l.trim()).filter((l) => l.startsWith("AGE-SECRET-KEY-1"));
  if (first === undefined) throw new Error(`no AGE-SECRET-KEY line in "${path}"`);
  return [first, ...rest];
}

/** An encrypted file found in a tree and the plain file it becomes. */
export interface SecretFile {
  /** Relative path of the encrypted file. */
  source: string;
  /** Relative path of the plain file beside it. */
  plain: string;
  kind: "age" | "sops";
}

/** The plain name for an encrypted file's name, or null when it is not one. */
export function plainName(rel: string): { plain: string; kind: "age" | "sops" } | null {
  const base = basename(rel);
  if (base.endsWith(".age") && base.length > 4 && base !== ".age") {
    return { plain: rel.slice(0, -4), kind: "age" };
  }
  if (isSopsName(base)) return { plain: join(dirname(rel), plainSopsName(base)), kind: "sops" };
  return null;
}

/**
 * Encrypted files in `root`, found by walking real directories only (a symlink is never followed,
 * `.git` is skipped). A symlink named like an encrypted file is refused.
 */
export async function findSecretFiles(root: string): Promise<SecretFile[]> {
  const out: SecretFile[] = [];
  const walk = async (dir: string): Promise<void> => {
    const entries = await readdir(dir, { withFileTypes: true });
    for (const e of entries) {
      const abs = join(dir, e.name);
      const rel = relative(root, abs);
      if (e.isDirectory()) {
        if (e.name === ".git") continue;
        await walk(abs);
        continue;
      }
      const p = plainName(rel);
      if (p === null) continue;
      if (!e.isFile()) throw new SecretError(rel, `Cannot decrypt "${rel}": it is not a regular file`);
      if (out.length >= MAX_SECRET_FILES) throw new SecretError(rel, `Cannot decrypt "${rel}": more than ${MAX_SECRET_FILES} encrypted files`);
      out.push({ source: rel, plain: p.plain, kind: p.kind });
    }
  };
  await walk(root);
  return out.sort((a, b) => a.source.localeCompare(b.source));
}

/** Reads an encrypted file (files.ts readCapped); one that may never be read is a SecretError. */
async function readSecretFile(path: string, rel: string, max: number): Promise<Uint8Array> {
  try {
    return await readCapped(path, max);
  } catch (e) {
    if (e instanceof FileError && e.problem !== "missing" && e.problem !== "unreadable") {
      throw new SecretError(rel, `Cannot decrypt "${rel}": ${e.why}`, { cause: e });
    }
    throw e;
  }
}

const ARMOR_BEGIN = "-----BEGIN AGE ENCRYPTED FILE-----";

/** Decrypts one age file (binary or armored) with any of `identities`. */
export async function decryptAge(data: Uint8Array, identities: readonly string[], rel: string): Promise<Uint8Array> {
  const d = new Decrypter();
  for (const id of identities) d.addIdentity(id);
  let bytes = data;
  const head = Buffer.from(data.subarray(0, 64)).toString("latin1").trimStart();
  try {
    if (head.startsWith(ARMOR_BEGIN)) bytes = armor.decode(Buffer.from(data).toString("utf8"));
    return await d.decrypt(bytes);
  } catch (e) {
    const why = /no identity matched/i.test(errorMessage(e))
      ? "it is not encrypted to this service's key (pgoctl SERVICE//recipient prints it)"
      : `it is not a valid age file: ${errorMessage(e).split("\n")[0]}`;
    throw new SecretError(rel, `Cannot decrypt "${rel}": ${why}`, { cause: e });
  }
}

/** What decryptTree did: the plain files it wrote and the values they hold (for redaction). */
export interface Decrypted {
  files: SecretFile[];
  /** Every decrypted value long enough to be recognised in text (for redaction), never logged. */
  values: string[];
}

/**
 * Decrypts every encrypted file in `root` to its plain name beside it, mode 0600, owned by
 * `owner`, written beside and renamed (a symlink at the plain name is replaced, never followed).
 * Plain files of encrypted files that are gone (listed in `previous`) are removed. Throws a
 * SecretError naming the first file that cannot be decrypted; nothing is left half written.
 */
export async function decryptTree(
  root: string,
  keys: ServiceKeys,
  owner: { uid: number; gid: number },
  previous: readonly string[] = [],
): Promise<Decrypted> {
  const files = await findSecretFiles(root);
  const plains = new Set(files.map((f) => f.plain));
  const values: string[] = [];
  const outputs: { file: SecretFile; data: Uint8Array }[] = [];
  for (const f of files) {
    const data = await readSecretFile(join(root, f.source), f.source, MAX_SECRET_BYTES);
    if (f.kind === "age") {
      const plain = await decryptAge(data, keys.identities, f.source);
      values.push(...secretValues(Buffer.from(plain).toString("utf8")));
      outputs.push({ file: f, data: plain });
    } else {
      const r = await decryptSops(Buffer.from(data).toString("utf8"), f.source, (enc) => decryptAge(enc, keys.identities, f.source));
      values.push(...r.values);
      outputs.push({ file: f, data: Buffer.from(r.text) });
    }
  }
  // Everything decrypted: only now is anything written.
  for (const { file, data } of outputs) await writePlain(root, file, data, owner);
  for (const rel of previous) {
    if (plains.has(rel)) continue;
    const abs = join(root, rel);
    const st = await lstat(abs).catch(() => null);
    if (st && (st.isFile() || st.isSymbolicLink())) await rm(abs, { force: true });
  }
  return { files, values: [...new Set(values)].filter((v) => v.length >= 4) };
}

/**
 * Writes a decrypted file to its plain name (files.ts writeFileBeneath): no directory on the way
 * and nothing at the name is followed if it is a symlink, mode 0600, owned by the service user;
 * written again even when it holds the same text, so its mode and owner are reset.
 */
async function writePlain(root: string, f: SecretFile, data: Uint8Array, owner: { uid: number; gid: number }): Promise<void> {
  try {
    await writeFileBeneath(root, f.plain, data, { mode: 0o600, owner, mkdirs: false, rewrite: true });
  } catch (e) {
    if (e instanceof FileError) throw new SecretError(f.source, `Cannot decrypt "${f.source}": ${e.why}`, { cause: e });
    throw e;
  }
}

/** Values worth redacting from a decrypted text: each dotenv value and each whole line. */
export function secretValues(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split(/\r?\n/)) {
    const t = line.trim();
    if (t === "" || t.startsWith("#")) continue;
    out.push(t);
    const m = t.match(/^(?:export\s+)?[A-Za-z_][A-Za-z0-9_.-]*\s*=\s*(.*)$/);
    if (m && m[1]) out.push(m[1].replace(/^(['"])(.*)\1$/, "$2"));
  }
  if (text.trim() !== "" && !text.includes("\n")) out.push(text.trim());
  return out;
}

/** `text` with every secret value replaced by `***`. */
export function redact(text: string, values: readonly string[]): string {
  let out = text;
  for (const v of [...values].sort((a, b) => b.length - a.length)) {
    if (v.length >= 4) out = out.split(v).join("***");
  }
  return out;
}

/** Whether `rel` (a path relative to the checkout) is inside it: no `..`, not absolute. */
export function insideTree(rel: string): boolean {
  return rel !== "" && !rel.startsWith("..") && !rel.startsWith(sep);
}
