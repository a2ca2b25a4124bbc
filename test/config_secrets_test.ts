import { afterAll, expect, test } from "bun:test";
import { chmodSync, chownSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseConfig } from "../src/config.ts";
import { configSecrets, readersBesidesRoot, warnIfConfigExposed } from "../src/config_secrets.ts";
import { memoryLogger } from "../src/log.ts";
import { tempDir } from "./helpers.ts";

const dir = tempDir("pgo-secrets-");
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const PLAIN = `[[services]]\nname = "web"\nuser = "www"\nrepository = "https://git.example.org/web"\n`;
const SECRET = "s3cr3t-token-value";
const WITH_SECRETS = `${PLAIN}env = ["DB_PASSWORD=${SECRET}"]\nregistries = ["bot:${SECRET}@registry.example.org"]\n` +
  `webhook_secret = "${SECRET}-webhook"\n\n[[services]]\nname = "api"\nuser = "api"\nrepository = "https://bot:${SECRET}@git.example.org/api"\n`;

function configFile(name: string, text: string, mode: number, gid = 0): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  chownSync(file, 0, gid);
  chmodSync(file, mode);
  return file;
}

test("configSecrets() names every key that holds a secret, and no value", () => {
  const keys = configSecrets(parseConfig(WITH_SECRETS, "pgo.toml"));
  expect(keys).toEqual(["services[1].registries", "services[1].env", "services[1].webhook_secret", "services[2].repository"]);
  expect(configSecrets(parseConfig(PLAIN, "pgo.toml"))).toEqual([]);
});

test("pgod warns once, naming the file and its mode, when a config with secrets is readable by others", async () => {
  const file = configFile("open.toml", WITH_SECRETS, 0o644);
  const log = memoryLogger();
  expect(await warnIfConfigExposed(file, parseConfig(WITH_SECRETS, file), log)).toBe(true);
  expect(log.lines).toHaveLength(1);
  expect(log.lines[0]).toStartWith("warn msg=\"the config file holds secrets and users other than root can read it: chmod 0640 and chown root:root\"");
  expect(log.lines[0]).toContain(` file=${file} mode=0644 owner=0:0 readable_by="every user" keys=registries,env,webhook_secret,repository`);
  expect(log.lines[0]).not.toContain(SECRET);
});

test("pgod says nothing of a config that only root can read, or that holds no secrets", async () => {
  const log = memoryLogger();
  for (const [name, text, mode] of [["pkg.toml", WITH_SECRETS, 0o640], ["private.toml", WITH_SECRETS, 0o600], ["plain.toml", PLAIN, 0o644]] as const) {
    const file = configFile(name, text, mode);
    expect(await warnIfConfigExposed(file, parseConfig(text, file), log)).toBe(false);
  }
  expect(log.lines).toEqual([]);
});

test("a group other than root's that may read the config counts as readable by others", async () => {
  const file = configFile("group.toml", WITH_SECRETS, 0o640, 100);
  const log = memoryLogger();
  expect(await warnIfConfigExposed(file, parseConfig(WITH_SECRETS, file), log)).toBe(true);
  expect(log.lines[0]).toContain("mode=0640 owner=0:100 readable_by=\"group 100\"");
  expect(readersBesidesRoot({ mode: 0o600, uid: 1000, gid: 0 })).toBe("user 1000");
  expect(readersBesidesRoot({ mode: 0o640, uid: 0, gid: 0 })).toBeNull();
});
