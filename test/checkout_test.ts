import { afterAll, expect, test } from "bun:test";
import { existsSync, lstatSync, mkdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { migrateGitDir, restoreCheckout } from "../src/checkout.ts";
import { makeRunner } from "../src/exec.ts";
import type { Git } from "../src/git.ts";
import { gitDirOf } from "../src/git.ts";
import { memoryLogger } from "../src/log.ts";
import { tempDir } from "./helpers.ts";

const root = tempDir();
afterAll(() => rmSync(root, { recursive: true, force: true }));
const runner = makeRunner({ logger: memoryLogger() });
const NOBODY = { name: "nobody", uid: 65534, gid: 65534, groups: [65534], home: "/" };

test("restoreCheckout() gives the checkout to the user without following a symlink out of it, then removes a .git and checks out", async () => {
  const checkout = join(root, "r", "web");
  const victim = join(root, "victim");
  mkdirSync(join(checkout, "sub"), { recursive: true });
  mkdirSync(victim);
  writeFileSync(join(victim, "file"), "root's\n");
  symlinkSync(victim, join(checkout, "link"));
  symlinkSync(victim, join(checkout, "sub", "deeper"));
  mkdirSync(join(checkout, ".git", "hooks"), { recursive: true });
  const calls: string[] = [];
  const git = { checkout: async (dir: string, branch: string, commit: string, keep?: readonly string[]) => void calls.push(`${dir} ${branch} ${commit} ${keep?.join(",")}`) } as unknown as Git;
  await restoreCheckout({ checkout, branch: "main", commit: "abc", keep: ["/import"] }, NOBODY, git, runner);
  expect(statSync(join(victim, "file")).uid).toBe(0);
  expect(statSync(victim).uid).toBe(0);
  expect(lstatSync(join(checkout, "link")).uid).toBe(65534);
  expect(statSync(join(checkout, "sub")).uid).toBe(65534);
  expect(existsSync(join(checkout, ".git"))).toBe(false);
  expect(calls).toEqual([`${checkout} main abc /import`]);
});

test("migrateGitDir() moves nothing when .git is a symlink, so no other directory's files are taken", async () => {
  const checkout = join(root, "m", "web");
  const other = join(root, "other-git");
  mkdirSync(join(other, "objects"), { recursive: true });
  writeFileSync(join(other, "HEAD"), "ref: refs/heads/main\n");
  mkdirSync(checkout, { recursive: true });
  symlinkSync(other, join(checkout, ".git"));
  expect(await migrateGitDir(checkout, "/x.git", { ...NOBODY, uid: 0, gid: 0 }, runner)).toBe(false);
  expect(existsSync(join(other, "objects"))).toBe(true);
  expect(readFileSync(join(other, "HEAD"), "utf8")).toBe("ref: refs/heads/main\n");
  expect(existsSync(gitDirOf(checkout))).toBe(false);
});
