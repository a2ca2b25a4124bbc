/**
 * Hostile compose files and hostile repositories against the real pgod and Docker engine. Each
 * case asserts what is kept: the running container of the last good commit, the checkout, files
 * outside the checkout, other services, and pgod's memory and responsiveness.
 * Run `bash scripts/build.sh` first.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { lstatSync } from "node:fs";
import { mkdir, readdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import {
  chownTree, composeFile, headOf, makeKey, openssh, preflight, run, runningOf, scenario, sshListening, sweepRun,
  uniqueName, waitFor, waitRunning,
} from "../e2e/harness.ts";
import type { Repo } from "../e2e/harness.ts";
import { keyWithText, RssSampler, rssMiB, sshRequest } from "./util.ts";
import { timeOf } from "../kit/pgod.ts";

/** How long a hostile commit may take from being fetched to being refused. */
const REFUSE_WITHIN_MS = 5_000;
/** pgod's resident memory must stay below this (an idle pgod uses about 100 MiB). */
const RSS_LIMIT_MIB = 300;

beforeAll(() => preflight());
afterAll(sweepRun);

/** Replaces `path` in the work clone by a symlink to `target` (made as written, relative or not), then commits. */
async function commitSymlink(repo: Repo, path: string, target: string, message: string): Promise<string> {
  const full = join(repo.work, path);
  await rm(full, { recursive: true, force: true });
  await mkdir(dirname(full), { recursive: true });
  await symlink(target, full);
  return repo.commit({}, message);
}

/** A syntactically valid ed25519 public key line that belongs to nobody. */
function randomKeyLine(comment: string): string {
  const name = Buffer.from("ssh-ed25519");
  const blob = Buffer.alloc(4 + name.length + 4 + 32);
  blob.writeUInt32BE(name.length, 0);
  name.copy(blob, 4);
  blob.writeUInt32BE(32, 4 + name.length);
  randomBytes(32).copy(blob, 8 + name.length);
  return `ssh-ed25519 ${blob.toString("base64")} ${comment}`;
}

describe("hostile input against a real pgod", () => {
  test.concurrent("an alias bomb, deep nesting, a 50 MB file and symlinks to /etc/shadow and into another checkout are refused quickly with bounded memory while the last good container runs on", async () => {
    await scenario("hostile compose", async (env) => {
      const user = await env.user();
      const a = uniqueName("hostile");
      const b = uniqueName("neighbour");
      const marker = `NEIGHBOUR-MARKER-${randomBytes(6).toString("hex")}`;
      const keyDir = await env.tempDir(0o700);
      const key = await makeKey(keyDir, "team");
      const good = composeFile();
      const [repoA, repoB] = await Promise.all([
        env.repo({ "compose.yaml": good, "ssh/team.pub": key.pub }),
        env.repo({ "compose.yaml": composeFile({ env: { SECRET_OF_B: marker } }) }),
      ]);
      await chownTree(repoA.bare, user.uid, user.gid);
      const pg = await env.pgod([{ name: a, user: user.name, repository: repoA.bare }, { name: b, repository: repoB.bare }]);
      const { port } = await sshListening(pg);
      const client = { port, key, knownHosts: "/dev/null" };
      const first = await waitRunning(a);
      await waitRunning(b);
      const checkout = join(pg.dir, a);
      const goodHead = await headOf(checkout);
      const rss = new RssSampler(pg.proc.pid);
      const idle = rssMiB(pg.proc.pid);
      const shadow = (await readFile("/etc/shadow", "utf8")).split("\n").filter((l) => l.length > 8);

      const bomb = `x-lol: &l0 ["lol"]\n${Array.from({ length: 9 }, (_, i) => `x-l${i + 1}: &l${i + 1} [${Array(10).fill(`*l${i}`).join(", ")}]`).join("\n")}\n${good}`;
      const deep = `${good}    labels: ${"[".repeat(100_000)}${"]".repeat(100_000)}\n`;
      // 50 MB of distinct lines: the worktree and `git cat-file` carry all of it through pgod
      // (it compresses well, so that git's own packing does not dominate the test's time).
      const lines: string[] = [good, "x-filler:"];
      for (let size = good.length; size < 50 * 1024 * 1024;) {
        const l = `  - item-${size}-of-a-compose-file-that-is-far-too-large-to-be-screened`;
        lines.push(l);
        size += l.length + 1;
      }
      const cases: Array<{ what: string; commit: () => Promise<string>; reason: RegExp }> = [
        { what: "an alias bomb", commit: () => repoA.commit({ "compose.yaml": bomb }, "bomb"), reason: /uses YAML aliases too often|aliases expand to more than/ },
        { what: "deep nesting", commit: () => repoA.commit({ "compose.yaml": deep }, "deep"), reason: /nests (deeper than 64 levels|too deeply)/ },
        { what: "a 50 MB file", commit: () => repoA.commit({ "compose.yaml": `${lines.join("\n")}\n` }, "huge"), reason: /larger than 1048576 bytes/ },
        { what: "a symlink to /etc/shadow", commit: () => commitSymlink(repoA, "compose.yaml", "/etc/shadow", "shadow"), reason: /symlink out of the repository/ },
        { what: "a symlink into another service's checkout", commit: () => commitSymlink(repoA, "compose.yaml", `../${b}/compose.yaml`, "neighbour"), reason: /symlink out of the repository/ },
      ];
      const timings: string[] = [];
      for (const c of cases) {
        const since = pg.log().length;
        const commit = await c.commit();
        const [refusal] = await pg.waitForLog(
          new RegExp(`msg="compose file refused, keeping what runs" service=${a} commit=${commit.slice(0, 12)} `),
          { since, timeoutMs: 60_000 },
        );
        // The commit is seen once the fetch is done: pgod then reads the fetched ref.
        const fetching = pg.lines(new RegExp(`msg=exec argv="git fetch [^"]*" cwd=${checkout} `), since)[0];
        const seen = pg.lines(new RegExp(`msg=exec argv="git rev-parse --verify --quiet refs/remotes/origin/main\\^\\{commit\\}" cwd=${checkout} `), since)[0];
        expect(fetching).toBeDefined();
        expect(seen).toBeDefined();
        const ms = timeOf(refusal!) - timeOf(seen!);
        timings.push(`${c.what}: refused ${ms} ms after the commit was fetched (the fetch took ${timeOf(seen!) - timeOf(fetching!)} ms); pgod RSS peak so far ${Math.round(rss.peak)} MiB`);
        expect({ what: c.what, reason: refusal }).toEqual({ what: c.what, reason: expect.stringMatching(c.reason) });
        expect({ what: c.what, fast: ms < REFUSE_WITHIN_MS }).toEqual({ what: c.what, fast: true });
        // Screened before docker compose saw it: no `docker compose config` ran for the commit.
        expect(pg.lines(new RegExp(`msg=exec argv="docker compose --project-name ${a} .*\\bconfig\\b`), since)).toEqual([]);
        // The last good commit stays checked out and its container runs on.
        expect(await headOf(checkout)).toBe(goodHead);
        expect((await runningOf(a)).map((x) => x.id)).toEqual([first.id]);
      }
      const peak = rss.stop();
      console.log(`hostile compose files (pgod idle ${Math.round(idle)} MiB):\n  ${timings.join("\n  ")}`);
      expect(peak).toBeLessThan(RSS_LIMIT_MIB);

      // Nothing outside the checkout was read: neither the shadow file nor the neighbour's
      // compose file shows up in the log or in what a client can ask for.
      const status = await openssh(client, `${a}//status`);
      expect(status.code).toBe(0);
      expect(status.stdout).toMatch(/^last result: refused$/m);
      expect(status.stdout).toContain("symlink out of the repository");
      const [check, history] = await Promise.all([openssh(client, `${a}//check`), openssh(client, `${a}//history`)]);
      // check answers for the newest commit, the last hostile one (DECISIONS.md #12).
      expect(check.code).toBe(1);
      expect(check.stdout).toContain("symlink out of the repository");
      expect(history.stdout.match(/refused by policy/g)?.length).toBe(cases.length);
      for (const text of [pg.log(), status.stdout, status.stderr, check.stdout, history.stdout]) {
        for (const l of shadow) expect(text.includes(l)).toBe(false);
        expect(text.includes(marker)).toBe(false);
      }

      // A fixing commit still deploys.
      await rm(join(repoA.work, "compose.yaml")); // the symlink: writing through it would follow it
      const fixed = await repoA.commit({ "compose.yaml": composeFile({ env: { FIXED: "1" } }) }, "fix");
      await waitFor(`the checkout at ${fixed}`, () => headOf(checkout), (h) => h === fixed, { timeoutMs: 60_000 });
      const next = await waitFor("a new container", () => runningOf(a), (cs) => cs.length === 1 && cs[0]!.id !== first.id, { timeoutMs: 60_000 });
      expect(next[0]!.state).toBe("running");
      expect(pg.exitCode).toBeNull();
    });
  }, 300_000);

  test.concurrent("ssh/ and key files as symlinks out of the checkout give no access, and import files through symlinks never write outside", async () => {
    await scenario("hostile symlinks", async (env) => {
      const outside = await env.tempDir();
      const keyDir = await env.tempDir(0o700);
      const [team, outKey, outKey2] = await Promise.all([
        keyWithText(keyDir, "team"), keyWithText(keyDir, "outside"), keyWithText(keyDir, "outside2"),
      ]);
      await mkdir(join(outside, "keys"));
      await writeFile(join(outside, "keys", "outside.pub"), outKey.pub);
      await writeFile(join(outside, "outside2.pub"), outKey2.pub);
      await writeFile(join(outside, "target.txt"), "ORIGINAL CONTENT\n");
      await mkdir(join(outside, "proxy"));
      const before = { target: await stat(join(outside, "target.txt")), proxy: await readdir(join(outside, "proxy")) };

      const [plain, sshOut, sshNeighbour, importLink, importDir] = ["plain", "sshout", "sshnb", "implink", "impdir"].map((t) => uniqueName(t)) as [string, string, string, string, string];
      const withTeam = { "compose.yaml": composeFile(), "ssh/team.pub": team.pub };
      const repos = await Promise.all([
        env.repo(withTeam), env.repo({ "compose.yaml": composeFile() }), env.repo({ "compose.yaml": composeFile() }),
        env.repo(withTeam), env.repo(withTeam),
      ]);
      const [rPlain, rSshOut, rSshNb, rImpLink, rImpDir] = repos as [Repo, Repo, Repo, Repo, Repo];
      // plain: its own key, plus a key file that is a symlink to a key outside.
      await commitSymlink(rPlain, "ssh/outside2.pub", join(outside, "outside2.pub"), "linked key file");
      // ssh/ itself a symlink: to a folder outside, and into the plain service's checkout.
      await commitSymlink(rSshOut, "ssh", join(outside, "keys"), "ssh outside");
      await commitSymlink(rSshNb, "ssh", `../${plain}/ssh`, "ssh of the neighbour");
      // The import file a symlink to a file outside; the import folder a symlink to a folder outside.
      await commitSymlink(rImpLink, "caddy/import", join(outside, "target.txt"), "import link");
      await commitSymlink(rImpDir, "proxy", join(outside, "proxy"), "import folder link");
      const urls = `urls = { "http://site.test" = "${plain}-web-1:8080" }\n`;
      const pg = await env.pgod([
        { name: plain, repository: rPlain.bare, extra: urls },
        { name: sshOut, repository: rSshOut.bare },
        { name: sshNeighbour, repository: rSshNb.bare },
        { name: importLink, repository: rImpLink.bare, extra: `import = "caddy/import"\n` },
        { name: importDir, repository: rImpDir.bare, extra: `import = "proxy/import"\n` },
      ], { args: ["-t", "10m"] });
      const { port } = await sshListening(pg);
      await pg.waitForLog(new RegExp(`msg=deployed service=(${plain}|${sshOut}|${sshNeighbour}|${importLink}) `), { count: 4 });
      await pg.waitForLog(new RegExp(`msg="cycle failed" service=${importDir} .*"proxy\\\\?" is a symlink`));

      const [own, viaLinkedFile, viaLinkedDir, neighbourKeyOnNeighbour, ownOnLinkedDir] = await Promise.all([
        sshRequest(port, team.text, `${plain}//ping`),
        sshRequest(port, outKey2.text, `${plain}//ping`),
        sshRequest(port, outKey.text, `${sshOut}//ping`),
        sshRequest(port, team.text, `${sshNeighbour}//ping`),
        sshRequest(port, team.text, `${sshOut}//ping`),
      ]);
      expect({ code: own.code, stdout: own.stdout }).toEqual({ code: 0, stdout: expect.stringMatching(/^pong /) });
      // Keys reachable only through symlinks are known nowhere: the login itself fails.
      expect(viaLinkedFile).toMatchObject({ code: null, error: expect.stringContaining("authentication methods failed") });
      expect(viaLinkedDir).toMatchObject({ code: null, error: expect.stringContaining("authentication methods failed") });
      // A key that logs in elsewhere gets no access through another checkout's linked ssh/ folder.
      expect({ code: neighbourKeyOnNeighbour.code, stderr: neighbourKeyOnNeighbour.stderr }).toEqual({
        code: 77, stderr: `Permission denied: this key may not use service "${sshNeighbour}"\n`,
      });
      expect(ownOnLinkedDir.code).toBe(77);
      // Logged each time the keys are read (logins at the same moment may each read them).
      const skipped = new Set(pg.lines(/Skipping \\?".*\/ssh\\?": not a directory \(symlinks are not followed\)/).map((l) => /service=(\S+)/.exec(l)?.[1]));
      expect([...skipped].sort()).toEqual([sshNeighbour, sshOut].sort());
      expect(pg.lines(/Skipping \\?".*\/ssh\/outside2\.pub\\?": a symlink/).length).toBeGreaterThanOrEqual(1);

      // The outside file behind the import symlink is untouched; the checkout holds the generated file.
      const linkPath = join(pg.dir, importLink, "caddy", "import");
      expect(await readFile(join(outside, "target.txt"), "utf8")).toBe("ORIGINAL CONTENT\n");
      expect((await stat(join(outside, "target.txt"))).mtimeMs).toBe(before.target.mtimeMs);
      expect(lstatSync(linkPath).isFile()).toBe(true);
      expect(await readFile(linkPath, "utf8")).toContain("http://site.test {");
      // The folder symlink is refused, nothing lands outside, and the service says why.
      expect(await readdir(join(outside, "proxy"))).toEqual(before.proxy);
      const status = await sshRequest(port, team.text, `${importDir}//status`);
      expect(status.code).toBe(0);
      expect(status.stdout).toContain(`last error:  Cannot write the import file "proxy/import": "proxy" is a symlink or not a directory`);
      expect(pg.exitCode).toBeNull();
    });
  }, 300_000);

  test.concurrent("a huge ssh/ folder of 5000 files, some over 64 KiB, leaves pgod responsive and the team's key working", async () => {
    await scenario("huge ssh folder", async (env) => {
      const keyDir = await env.tempDir(0o700);
      const [team, big, late] = await Promise.all([keyWithText(keyDir, "team"), keyWithText(keyDir, "big"), keyWithText(keyDir, "late")]);
      const files: Record<string, string> = { "compose.yaml": composeFile(), "ssh/0000-team.pub": team.pub };
      // A real key in a file over the 64 KiB limit, 49 more such files, a real key past the
      // 1000-file limit, and 4948 files of well-formed keys that belong to nobody.
      files["ssh/0001-big.pub"] = `${big.pub}${"# padding padding padding padding padding padding\n".repeat(2000)}`;
      for (let i = 2; i < 51; i++) files[`ssh/${String(i).padStart(4, "0")}-big.pub`] = `${randomKeyLine("big")}\n`.repeat(1000);
      for (let i = 51; i < 4999; i++) files[`ssh/${String(i).padStart(4, "0")}-k.pub`] = `${randomKeyLine(`k${i}`)}\n`;
      files["ssh/zzzz-late.pub"] = late.pub;
      const name = uniqueName("hugessh");
      const repo = await env.repo(files);
      const pg = await env.pgod([{ name, repository: repo.bare }], { args: ["-t", "2s"] });
      const { port } = await sshListening(pg);
      await pg.waitForLog(new RegExp(`msg=deployed service=${name} `));
      const rss = new RssSampler(pg.proc.pid);

      const pings = [];
      for (let i = 0; i < 5; i++) pings.push(await sshRequest(port, team.text, `${name}//ping`));
      const [bigKey, lateKey] = await Promise.all([sshRequest(port, big.text, `${name}//ping`), sshRequest(port, late.text, `${name}//ping`)]);
      // A commit that touches the folder makes pgod read it again; it stays responsive meanwhile.
      const since = pg.log().length;
      await repo.commit({ "ssh/0002-big.pub": `${randomKeyLine("changed")}\n` }, "touch the keys");
      await pg.waitForLog(/msg="new commit"/, { since });
      for (let i = 0; i < 5; i++) pings.push(await sshRequest(port, team.text, `${name}//ping`));
      const peak = rss.stop();
      console.log(`huge ssh/ folder: ping latency ${pings.map((p) => Math.round(p.ms)).join(", ")} ms; pgod RSS peak ${Math.round(peak)} MiB`);
      for (const p of pings) {
        expect({ code: p.code, stdout: p.stdout }).toEqual({ code: 0, stdout: expect.stringMatching(/^pong /) });
        expect(p.ms).toBeLessThan(2000);
      }
      expect(bigKey).toMatchObject({ code: null, error: expect.stringContaining("authentication methods failed") });
      expect(lateKey).toMatchObject({ code: null, error: expect.stringContaining("authentication methods failed") });
      expect(pg.lines(/Reading only the first 1000 of 5000 key files/).length).toBeGreaterThanOrEqual(1);
      expect(pg.lines(/Skipping \\?".*\/ssh\/0001-big\.pub\\?": larger than 65536 bytes/).length).toBeGreaterThanOrEqual(1);
      expect(peak).toBeLessThan(RSS_LIMIT_MIB);
    });
  }, 300_000);

  test.concurrent("key options are honoured: command= runs instead of the request, from= and expiry-time hold, certificate authorities and unknown options keep a key out", async () => {
    await scenario("odd key options", async (env) => {
      const keyDir = await env.tempDir(0o700);
      const keys = await Promise.all(["k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9"].map((n) => keyWithText(keyDir, n)));
      const rsa = `${keyDir}/rsa`;
      const ecdsa = `${keyDir}/ecdsa`;
      await run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", rsa]);
      await run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "256", "-N", "", "-f", ecdsa]);
      const bare = (pub: string): string => pub.trim().split(/\s+/).slice(0, 2).join(" ");
      const [k1, k2, k3, k4, k5, k6, k7, k8, k9] = keys as [typeof keys[0], typeof keys[0], typeof keys[0], typeof keys[0], typeof keys[0], typeof keys[0], typeof keys[0], typeof keys[0], typeof keys[0]];
      const text = [
        "# keys of the team, with the options OpenSSH allows",
        `command="ping",no-pty,no-port-forwarding ${bare(k1.pub)} first key`,
        `from="127.0.0.1,::1",no-agent-forwarding ${bare(k2.pub)} comment with  spaces`,
        `environment="A=b, c \\"d\\"",no-X11-forwarding ${bare(k3.pub)} k3`,
        `restrict ${bare(k4.pub)}`,
        `  \tno-pty,no-X11-forwarding  ${bare(k5.pub)} k5\r`,
        `no-pty ${bare(await readFile(`${rsa}.pub`, "utf8"))} rsa`,
        `from="127.0.0.0/8",expiry-time="29991231" ${bare(await readFile(`${ecdsa}.pub`, "utf8"))} ecdsa`,
        `from="10.0.0.0/8" ${bare(k6.pub)} elsewhere`,
        `expiry-time="20200101" ${bare(k7.pub)} expired`,
        `cert-authority ${bare(k8.pub)} a CA`,
        `no-such-option ${bare(k9.pub)} unknown`,
        "",
      ].join("\n");
      const name = uniqueName("odd");
      const repo = await env.repo({ "compose.yaml": composeFile(), "ssh/team.pub": text });
      const pg = await env.pgod([{ name, repository: repo.bare }], { args: ["-t", "10m"] });
      const { port } = await sshListening(pg);
      await pg.waitForLog(new RegExp(`msg=deployed service=${name} `));
      const privates = [...keys.map((k) => k.text), await readFile(rsa, "utf8"), await readFile(ecdsa, "utf8")];
      // `history` is asked; the key with command="ping" gets pong instead.
      const answers = await Promise.all(privates.map((p, i) => sshRequest(port, p, `${name}//${i === 0 ? "history" : "ping"}`)));
      const said = (a: (typeof answers)[number]): string => (a.error ? "refused" : `${a.code} ${a.stdout.split(" ")[0]}`);
      const labels = ["command=", "from=", "quoted options", "restrict", "blanks and CRLF", "from= elsewhere", "expired", "cert-authority", "unknown option", "rsa", "ecdsa"];
      const want = ["0 pong", "0 pong", "0 pong", "0 pong", "0 pong", "refused", "refused", "refused", "refused", "0 pong", "0 pong"];
      expect(answers.map((a, i) => `${labels[i]}: ${said(a)}`)).toEqual(labels.map((l, i) => `${l}: ${want[i]}`));
      expect(pg.lines(/warn msg="\S+team\.pub: Skipping the key on line 11: it is a certificate authority/)).not.toEqual([]);
      expect(pg.lines(/warn msg="\S+team\.pub: Skipping the key on line 12: unknown option \\"no-such-option\\"/)).not.toEqual([]);
      // OpenSSH's client too, with the key whose options hold quoted spaces, and the forced command.
      expect((await openssh({ port, key: k3, knownHosts: "/dev/null" }, `${name}//ping`)).code).toBe(0);
      const forced = await openssh({ port, key: k1, knownHosts: "/dev/null" }, `${name}//down`);
      expect(forced.stdout).toStartWith("pong ");
      expect(await runningOf(name)).toHaveLength(1);
    });
  }, 300_000);
});
