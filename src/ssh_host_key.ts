/** pgod's SSH host key: made once (ed25519, mode 0600) and read at every start. */
import { chmod, readFile, stat } from "node:fs/promises";
import { utils, type ParsedKey } from "ssh2";
import { errnoCode, errorMessage } from "./errors.ts";
import { writeFileAtomic } from "./files.ts";
import type { Logger } from "./log.ts";

/**
 * A new ed25519 host key in OpenSSH format. Under Bun, about 1 in 200 keys that ssh2 generates
 * fail its own parser ("Malformed OpenSSH private key"), so a key is only kept once it parses.
 */
function newHostKey(): string {
  for (let i = 0; i < 50; i++) {
    const text = utils.generateKeyPairSync("ed25519").private;
    if (!(utils.parseKey(text) instanceof Error)) return text;
  }
  throw new Error("Cannot make an SSH host key that ssh2 can read");
}

/** Reads the host key, or makes one (atomically, mode 0600) when there is none. */
export async function loadHostKey(path: string, log: Logger): Promise<{ text: string; blob: Buffer }> {
  let text: string | undefined;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    if (errnoCode(e) !== "ENOENT") throw new Error(`Cannot read SSH host key "${path}": ${errorMessage(e)}`, { cause: e });
  }
  if (text === undefined) {
    text = newHostKey();
    await writeFileAtomic(path, text).catch((e: unknown) => {
      throw new Error(`Cannot write SSH host key: ${errorMessage(e)}`, { cause: e });
    });
    log.info("Created SSH host key", { file: path });
  } else {
    const st = await stat(path);
    if ((st.mode & 0o077) !== 0) {
      await chmod(path, 0o600);
      log.warn("SSH host key was readable by others: made it mode 0600", { file: path });
    }
  }
  const parsed: unknown = utils.parseKey(text);
  // ssh2 returns an array for a file holding several keys; pgod uses the first.
  const k = (Array.isArray(parsed) ? parsed[0] : parsed) as ParsedKey | Error;
  if (k instanceof Error) throw new Error(`Cannot use SSH host key "${path}": ${k.message}`);
  if (!k.isPrivateKey()) throw new Error(`Cannot use SSH host key "${path}": not a private key`);
  if (k.type !== "ssh-ed25519") throw new Error(`Cannot use SSH host key "${path}": a ${k.type} key, not ssh-ed25519`);
  return { text, blob: k.getPublicSSH() };
}
