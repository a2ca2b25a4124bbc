import { afterAll, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Identity, Runner } from "../src/exec.ts";
import { makeRunner } from "../src/exec.ts";
import { gitDirOf, makeGit, remoteAccess } from "../src/git.ts";
import type { Git } from "../src/git.ts";
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
    Bun.spawnSync(["mkdir", "-p", dir, join(root, ".gitdirs")]);
    await g.clone(dir, url, "main");
    expect(await g.head(dir)).toBe(git(repo.work, "rev-parse", "HEAD"));
    const next = repo.commit({ README: "x\n" });
    expect(await g.remoteHead(dir, "main")).toBe(next);
    expect(await g.fetch(dir, "main")).toBe(next);
    expect(await g.remoteUrl(dir)).toBe(`${server.base}/remote.git`);
    expect(argvs.filter((a) => a.includes(token))).toEqual([]);
    expect(readFileSync(join(gitDirOf(dir), "config"), "utf8")).not.toContain(token);
    // Without the credentials the server refuses: the header is what let git in.
    const anonymous = makeGit(runner, account, "app", `${server.base}/remote.git`);
    await expect(anonymous.remoteHead(dir, "main")).rejects.toThrow();
  } finally {
    await server.stop();
  }
});

const ROOT_ACCOUNT = { name: "root", uid: 0, gid: 0, groups: [0], home: root };

/** A fresh clone made by makeGit, a second commit on the remote, and a marker path hostile programs would create. */
async function cloned(name: string, files: Record<string, string> = {}): Promise<{ g: Git; dir: string; repo: TestRepo; marker: string; hostile: string; next: string }> {
  const base = join(root, name);
  const repo = new TestRepo(join(base, "repo"), { "compose.yaml": "services: {}\n", ...files });
  const dir = join(base, "dir", "web");
  mkdirSync(dir, { recursive: true });
  mkdirSync(join(base, "dir", ".gitdirs"));
  const g = makeGit(makeRunner({ logger: memoryLogger() }), ROOT_ACCOUNT, "web", repo.remote);
  await g.clone(dir, repo.remote, "main");
  const marker = join(base, "MARKER");
  // The program every hostile setting names: it leaves the marker, then does what git asked.
  const hostile = join(base, "hostile.sh");
  writeFileSync(hostile, `#!/bin/sh\necho "$0 $*" >> ${marker}\nexit 1\n`);
  chmodSync(hostile, 0o755);
  const next = repo.commit({ "compose.yaml": "services: {}\n# two\n", "README": "x\n" });
  return { g, dir, repo, marker, hostile, next };
}

/** Every operation pgod runs on a checkout, errors ignored: only what they start matters here. */
async function everything(g: Git, dir: string, next: string): Promise<void> {
  const quiet = async (p: Promise<unknown>) => void (await p.catch(() => {}));
  const head = await g.head(dir);
  await quiet(g.remoteHead(dir, "main"));
  await quiet(g.fetch(dir, "main"));
  await quiet(g.changedFiles(dir, head ?? next, next));
  await quiet(g.show(dir, next, "compose.yaml"));
  const stage = join(dir, "..", ".stage-web");
  mkdirSync(stage, { recursive: true });
  await quiet(g.addWorktree(dir, stage, next));
  await quiet(g.removeWorktree(dir, stage));
  rmSync(stage, { recursive: true, force: true });
  await quiet(g.checkout(dir, "main", next));
  await quiet(g.resolveCommit(dir, next.slice(0, 8)));
  await quiet(g.remoteUrl(dir));
}

test("the git directory lives outside the work tree, and the work tree holds no .git", async () => {
  const { g, dir, repo } = await cloned("layout");
  expect(existsSync(join(dir, ".git"))).toBe(false);
  expect(existsSync(join(gitDirOf(dir), "HEAD"))).toBe(true);
  expect(gitDirOf(dir)).toBe(join(dir, "..", ".gitdirs", "web"));
  expect(await g.head(dir)).toBe(git(repo.work, "rev-parse", "HEAD~1"));
  expect(existsSync(join(gitDirOf(dir), "hooks"))).toBe(false); // no templates, not even samples
});

test("pristine() says whether the work tree is exactly a commit, with pgod's own files kept, and writes nothing", async () => {
  const { g, dir } = await cloned("pristine");
  const head = (await g.head(dir))!;
  expect(await g.pristine(dir, head)).toBe(true);
  writeFileSync(join(dir, "import"), "pgod's own\n");
  expect(await g.pristine(dir, head)).toBe(false);
  expect(await g.pristine(dir, head, ["/import"])).toBe(true);
  const index = readFileSync(join(gitDirOf(dir), "index"));
  writeFileSync(join(dir, "compose.yaml"), "services: {x: {image: y}}\n");
  expect(await g.pristine(dir, head, ["/import"])).toBe(false);
  expect(readFileSync(join(gitDirOf(dir), "index")).equals(index)).toBe(true);
  expect(await g.pristine(dir, "0".repeat(40), ["/import"])).toBe(false);
});

test("a .git a container writes into the checkout (hooks, fsmonitor, hooksPath, uploadpack, sshCommand, filters, pager, include, a gitdir file) is never read and runs nothing", async () => {
  for (const kind of ["dir", "file"]) {
    const { g, dir, marker, hostile, next } = await cloned(`container-${kind}`, { ".gitattributes": "* filter=evil diff=evil\n" });
    const fake = kind === "dir" ? join(dir, ".git") : join(dir, "..", "fake.git");
    mkdirSync(join(fake, "hooks"), { recursive: true });
    for (const h of ["post-checkout", "post-merge", "reference-transaction", "pre-auto-gc", "post-index-change", "fsmonitor-watchman"]) {
      writeFileSync(join(fake, "hooks", h), `#!/bin/sh\nexec ${hostile} hook ${h}\n`);
      chmodSync(join(fake, "hooks", h), 0o755);
    }
    writeFileSync(join(fake, "HEAD"), "ref: refs/heads/main\n");
    mkdirSync(join(fake, "objects"), { recursive: true });
    mkdirSync(join(fake, "refs"), { recursive: true });
    writeFileSync(join(fake, "included"), `[core]\n\tfsmonitor = ${hostile}\n`);
    writeFileSync(join(fake, "config"), [
      "[core]", `\tfsmonitor = ${hostile}`, `\thooksPath = ${join(fake, "hooks")}`, `\tsshCommand = ${hostile}`,
      `\tpager = ${hostile}`, `\teditor = ${hostile}`, "[remote \"origin\"]", `\turl = ${join(root, "nowhere.git")}`,
      `\tuploadpack = ${hostile}`, `\treceivepack = ${hostile}`, "[filter \"evil\"]", `\tsmudge = ${hostile}`, `\tclean = ${hostile}`,
      `\tprocess = ${hostile}`, "[diff \"evil\"]", `\ttextconv = ${hostile}`, `\tcommand = ${hostile}`, "[diff]", `\texternal = ${hostile}`,
      "[include]", `\tpath = ${join(fake, "included")}`, "",
    ].join("\n"));
    if (kind === "file") writeFileSync(join(dir, ".git"), `gitdir: ${fake}\n`);
    await everything(g, dir, next);
    expect(existsSync(marker)).toBe(false);
    // pgod's own git directory did the work: the checkout moved to the new commit.
    expect(await g.head(dir)).toBe(next);
  }
});

test("hooks and program-running config in pgod's own git directory run nothing either (defence in depth)", async () => {
  const variants: Record<string, (gd: string, hostile: string, dir: string) => void> = {
    "hooks": (gd, hostile) => {
      mkdirSync(join(gd, "hooks"), { recursive: true });
      for (const h of ["post-checkout", "reference-transaction", "pre-auto-gc", "post-index-change"]) {
        writeFileSync(join(gd, "hooks", h), `#!/bin/sh\nexec ${hostile} hook\n`);
        chmodSync(join(gd, "hooks", h), 0o755);
      }
    },
    "core.hooksPath": (gd, hostile) => {
      mkdirSync(join(gd, "evilhooks"));
      writeFileSync(join(gd, "evilhooks", "post-checkout"), `#!/bin/sh\nexec ${hostile}\n`);
      chmodSync(join(gd, "evilhooks", "post-checkout"), 0o755);
      git(gd, `--git-dir=${gd}`, "config", "core.hooksPath", join(gd, "evilhooks"));
    },
    "core.fsmonitor": (gd, hostile) => git(gd, `--git-dir=${gd}`, "config", "core.fsmonitor", hostile),
    "remote.origin.uploadpack": (gd, hostile) => git(gd, `--git-dir=${gd}`, "config", "remote.origin.uploadpack", hostile),
    "credential.helper": (gd, hostile) => git(gd, `--git-dir=${gd}`, "config", "credential.helper", `!${hostile}`),
    "core.sshCommand": (gd, hostile) => {
      git(gd, `--git-dir=${gd}`, "config", "core.sshCommand", hostile);
      git(gd, `--git-dir=${gd}`, "config", "remote.origin.url", "ssh://git@127.0.0.1:1/x.git");
    },
    "core.gitProxy": (gd, hostile) => {
      git(gd, `--git-dir=${gd}`, "config", "core.gitProxy", hostile);
      git(gd, `--git-dir=${gd}`, "config", "remote.origin.url", "git://127.0.0.1:1/x.git");
    },
    // git's own default refuses ext:: too; protocol.ext.allow=never keeps it so.
    "url.insteadOf to ext::": (gd, hostile) => git(gd, `--git-dir=${gd}`, "config", `url.ext::${hostile} %S .insteadOf`, git(gd, `--git-dir=${gd}`, "config", "remote.origin.url")),
    "core.attributesFile naming a filter driver": (gd, hostile) => {
      writeFileSync(join(gd, "attrs"), "* filter=evil\n");
      git(gd, `--git-dir=${gd}`, "config", "core.attributesFile", join(gd, "attrs"));
      git(gd, `--git-dir=${gd}`, "config", "filter.evil.smudge", hostile);
    },
  };
  const ran: Record<string, string> = {};
  await Promise.all(Object.entries(variants).map(async ([name, plant]) => {
    const { g, dir, marker, hostile, next } = await cloned(`own-${name.replace(/[^a-z]/gi, "")}`);
    plant(gitDirOf(dir), hostile, dir);
    await everything(g, dir, next);
    ran[name] = existsSync(marker) ? readFileSync(marker, "utf8") : "";
  }));
  expect(ran).toEqual(Object.fromEntries(Object.keys(variants).map((k) => [k, ""])));
});

test("a credential helper from the git directory never runs against a remote that asks for a password", async () => {
  new TestRepo(join(root, "cred"));
  const server = serveGitHttp(join(root, "cred"), { auth: { user: "bot", pass: "pw" } });
  try {
    const dir = join(root, "cred-dir", "web");
    mkdirSync(dir, { recursive: true });
    mkdirSync(join(root, "cred-dir", ".gitdirs"));
    const url = `${server.base.replace("http://", "http://bot:pw@")}/remote.git`;
    const g = makeGit(makeRunner({ logger: memoryLogger() }), ROOT_ACCOUNT, "web", url);
    await g.clone(dir, url, "main");
    const marker = join(root, "cred-MARKER");
    const gd = gitDirOf(dir);
    git(gd, `--git-dir=${gd}`, "config", "credential.helper", `!touch ${marker}; true`);
    // Without the token the server asks for credentials: git may ask no helper for them.
    const anonymous = makeGit(makeRunner({ logger: memoryLogger() }), ROOT_ACCOUNT, "web", `${server.base}/remote.git`);
    await expect(anonymous.fetch(dir, "main")).rejects.toThrow();
    expect(existsSync(marker)).toBe(false);
  } finally {
    await server.stop();
  }
});

test("git runs with the user's groups but never the docker group, even when the user is a member", async () => {
  const ids: Identity[] = [];
  const real = makeRunner({ logger: memoryLogger() });
  const runner: Runner = (argv, o) => {
    if (o.as) ids.push(o.as);
    return real(argv, o);
  };
  const docker = 4242;
  const account = { name: "nobody", uid: 65534, gid: 65534, groups: [65534, 4343, docker], home: root, dockerGid: docker };
  const g = makeGit(runner, account, "web", "/nowhere.git");
  mkdirSync(join(root, "nogroups", "web"), { recursive: true });
  await g.head(join(root, "nogroups", "web"));
  expect(ids.length).toBeGreaterThan(0);
  for (const id of ids) expect(id.groups).toEqual([65534, 4343]);
  // What such a child really gets, seen by `id` inside it.
  const r = await real(["id", "-G"], { env: { PATH: "/usr/bin:/bin" }, as: ids[0]! });
  expect(r.stdout.trim().split(" ").map(Number).sort()).toEqual([4343, 65534]);
});

test("writeImportFile() never writes through a checkout's .git/info/exclude a container made a symlink", async () => {
  const { dir } = await cloned("exclude-link");
  const victim = join(root, "exclude-victim");
  writeFileSync(victim, "precious\n");
  mkdirSync(join(dir, ".git", "info"), { recursive: true });
  symlinkSync(victim, join(dir, ".git", "info", "exclude"));
  const { writeImportFile } = await import("../src/caddy.ts");
  await writeImportFile(dir, "caddy/import", "site {\n}\n", { uid: 0, gid: 0 });
  expect(readFileSync(victim, "utf8")).toBe("precious\n");
  expect(readFileSync(join(gitDirOf(dir), "info", "exclude"), "utf8")).toBe("/caddy/import\n");
});
