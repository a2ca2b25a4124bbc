import { afterAll, expect, test } from "bun:test";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { Runner } from "../src/exec.ts";
import { makeRunner } from "../src/exec.ts";
import { makeGit, remoteAccess } from "../src/git.ts";
import { memoryLogger } from "../src/log.ts";
import { serveGitHttp } from "./git_http.ts";
import { git, tempDir, TestRepo } from "./helpers.ts";

const root = tempDir();
afterAll(() => rmSync(root, { recursive: true, force: true }));

test("remoteAccess() moves the credentials of an http(s) URL into git config for that URL and leaves other URLs alone", () => {
  expect(remoteAccess("https://bot:s%40cret@git.example.org/team/app.git")).toEqual({
    url: "https://git.example.org/team/app.git",
    env: {
      GIT_CONFIG_COUNT: "1",
      GIT_CONFIG_KEY_0: "http.https://git.example.org/team/app.git.extraHeader",
      GIT_CONFIG_VALUE_0: `Authorization: Basic ${Buffer.from("bot:s@cret").toString("base64")}`,
    },
  });
  expect(remoteAccess("https://tok3n@h/x.git").env["GIT_CONFIG_VALUE_0"]).toBe(`Authorization: Basic ${Buffer.from("tok3n:").toString("base64")}`);
  for (const url of ["https://h/x.git", "git@h:x.git", "ssh://git@h/x.git", "/srv/git/x.git"]) {
    expect(remoteAccess(url)).toEqual({ url, env: {} });
  }
});

test("a clone, poll and fetch of a remote that needs a token never put the token in an argv or in .git/config", async () => {
  const token = "TOKEN-7f3a9c";
  const repo = new TestRepo(join(root, "auth"));
  const server = serveGitHttp(join(root, "auth"), { auth: { user: "bot", pass: token } });
  const argvs: string[] = [];
  const real = makeRunner({ logger: memoryLogger() });
  const runner: Runner = (argv, o) => {
    argvs.push(argv.join(" "));
    return real(argv, o);
  };
  const account = { name: "root", uid: 0, gid: 0, groups: [0], home: root };
  try {
    const url = `${server.base.replace("http://", `http://bot:${token}@`)}/remote.git`;
    const g = makeGit(runner, account, "app", url);
    const dir = join(root, "checkout");
    Bun.spawnSync(["mkdir", "-p", dir]);
    await g.clone(dir, url, "main");
    expect(await g.head(dir)).toBe(git(repo.work, "rev-parse", "HEAD"));
    const next = repo.commit({ README: "x\n" });
    expect(await g.remoteHead(dir, "main")).toBe(next);
    expect(await g.fetch(dir, "main")).toBe(next);
    expect(await g.remoteUrl(dir)).toBe(`${server.base}/remote.git`);
    expect(argvs.filter((a) => a.includes(token))).toEqual([]);
    expect(readFileSync(join(dir, ".git", "config"), "utf8")).not.toContain(token);
    // Without the credentials the server refuses: the header is what let git in.
    const anonymous = makeGit(runner, account, "app", `${server.base}/remote.git`);
    await expect(anonymous.remoteHead(dir, "main")).rejects.toThrow();
  } finally {
    await server.stop();
  }
});
