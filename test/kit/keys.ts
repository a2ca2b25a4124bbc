/** SSH client keys made with ssh-keygen, for the tests and the benchmark. */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { run } from "./process.ts";

/** A client key pair made by ssh-keygen. */
export interface Key {
  /** The private key file. */
  file: string;
  /** The public key line (authorized_keys format). */
  pub: string;
  fingerprint: string;
}

/** Makes an unencrypted ed25519 key pair `<dir>/<name>` (and `.pub`). */
export async function makeKey(dir: string, name: string): Promise<Key> {
  const file = join(dir, name);
  await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", `${name}@pgo-test`, "-f", file]);
  const pub = await readFile(`${file}.pub`, "utf8");
  return { file, pub, fingerprint: await fingerprintOf(file) };
}

/** The SHA256 fingerprint of a key file (private or public), as ssh-keygen computes it. */
export async function fingerprintOf(file: string): Promise<string> {
  const r = await run(["ssh-keygen", "-l", "-E", "sha256", "-f", file]);
  const fp = /\b(SHA256:\S+)/.exec(r.stdout)?.[1];
  if (fp === undefined) throw new Error(`Cannot read the fingerprint of "${file}": ${r.stdout}`);
  return fp;
}
