/** Whether the config file, which holds secrets, is readable by users other than root. */
import { stat } from "node:fs/promises";
import type { Config } from "./config.ts";
import { httpCredentials } from "./git.ts";
import type { Logger } from "./log.ts";

/** The keys of the config that hold secrets, `services[N].key` (names only, never values). */
export function configSecrets(config: Config): string[] {
  const out: string[] = [];
  config.services.forEach((s, i) => {
    const at = (key: string): number => out.push(`services[${i + 1}].${key}`);
    if (httpCredentials(s.repository)?.authorization || /^[a-z][a-z0-9+.-]*:\/\/[^/@]*:[^/@]*@/i.test(s.repository)) at("repository");
    if (s.registries.length > 0) at("registries");
    if (s.envKeys.length > 0) at("env");
    if (s.webhookSecret !== undefined) at("webhook_secret");
  });
  return out;
}

/**
 * Who other than root may read a file with this owner and mode: "others", the file's group when
 * it is not root's, or its owner when that is not root; null when only root may.
 */
export function readersBesidesRoot(s: { mode: number; uid: number; gid: number }): string | null {
  if (s.mode & 0o004) return "every user";
  if (s.mode & 0o040 && s.gid !== 0) return `group ${s.gid}`;
  if (s.mode & 0o400 && s.uid !== 0) return `user ${s.uid}`;
  return null;
}

/**
 * Logs one warning when `file` holds secrets and users other than root can read it (the package
 * installs /etc/pgo.toml 0640 root:root). Returns whether it warned.
 */
export async function warnIfConfigExposed(file: string, config: Config, log: Logger): Promise<boolean> {
  const secrets = configSecrets(config);
  if (secrets.length === 0) return false;
  const s = await stat(file).catch(() => null);
  const readers = s ? readersBesidesRoot(s) : null;
  if (s === null || readers === null) return false;
  log.warn("the config file holds secrets and users other than root can read it: chmod 0640 and chown root:root", {
    file, mode: (s.mode & 0o7777).toString(8).padStart(4, "0"), owner: `${s.uid}:${s.gid}`, readable_by: readers,
    keys: [...new Set(secrets.map((k) => k.replace(/^services\[\d+\]\./, "")))].join(","),
  });
  return true;
}
