/**
 * pgod against the real Docker engine: each test starts `dist/pgod` with its own dirs, config and
 * git remote, and checks the outcome with `docker` itself. Tests share no state and run
 * concurrently. Run `bash scripts/build.sh` first.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { gitDirOf } from "../../src/git.ts";
import { existsSync, statSync } from "node:fs";
import { rename, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { serveGitHttp } from "../git_http.ts";
import {
  chownTree, composeExec, composeFile, containersOf, headOf, inspect, lsRemote, preflight, run, runningOf, scenario,
  sweepRun, uniqueName, waitFor, waitRunning,
} from "./harness.ts";

beforeAll(() => preflight());
afterAll(sweepRun);

describe("pgod with a real Docker engine", () => {
  test.concurrent("the service comes up from its repository", async () => {
    await scenario("comes up", async (env) => {
      const name = uniqueName("up");
      const repo = await env.repo({ "compose.yaml": composeFile({ network: true }) });
      const pg = await env.pgod([{ name, repository: repo.bare }]);
      const c = await waitRunning(name);
      const labels = (await inspect(c.id)).Config.Labels ?? {};
      expect(labels["com.docker.compose.project.working_dir"]).toBe(join(pg.dir, name));
      expect(labels["com.docker.compose.service"]).toBe("web");
      expect(await headOf(join(pg.dir, name))).toBe((await run(["git", "-C", repo.bare, "rev-parse", "main"])).stdout.trim());
      await pg.waitForLog(new RegExp(`msg=deployed service=${name} `));
      // With Docker's own CLI, pgod runs the compose plugin it names without the CLI in front.
      await pg.waitForLog(/msg="running the docker compose plugin directly" path=\/\S+\/docker-compose/);
    });
  });

  test.concurrent("a smart HTTP remote is polled in-process, with no git process, and a push still deploys", async () => {
    await scenario("http remote", async (env) => {
      const name = uniqueName("http");
      const repo = await env.repo({ "compose.yaml": composeFile({ env: { VERSION: "1" } }) });
      const server = serveGitHttp(dirname(repo.bare));
      env.defer(() => server.stop());
      const pg = await env.pgod([{ name, repository: `${server.base}/remote.git` }]);
      const first = await waitRunning(name);
      await pg.waitForLog(new RegExp(`msg=deployed service=${name} `));
      const since = pg.log().length;
      const polled = new RegExp(`debug msg="polled the remote" service=${name} via=http commit=`);
      await pg.waitForLog(polled, { since, count: 3 });
      expect(pg.lines(/msg=exec /, since)).toEqual([]);
      expect((await runningOf(name)).map((c) => c.id)).toEqual([first.id]);

      await repo.commit({ "compose.yaml": composeFile({ env: { VERSION: "2" } }) }, "version 2");
      const after = await waitFor(
        "the new container of version 2",
        () => runningOf(name),
        (cs) => cs.length === 1 && cs[0]!.id !== first.id,
      );
      expect((await inspect(after[0]!.id)).Config.Env).toContain("VERSION=2");
      expect(pg.lines(/msg=exec argv="git ls-remote/)).toEqual([]);
    });
  });

  test.concurrent("a commit that changes the compose file replaces the container", async () => {
    await scenario("compose change", async (env) => {
      const name = uniqueName("change");
      const repo = await env.repo({ "compose.yaml": composeFile({ env: { VERSION: "1" } }) });
      await env.pgod([{ name, repository: repo.bare }]);
      const first = await waitRunning(name);
      expect((await inspect(first.id)).Config.Env).toContain("VERSION=1");
      await repo.commit({ "compose.yaml": composeFile({ env: { VERSION: "2" } }) }, "version 2");
      const second = await waitFor(
        "a new running container",
        () => containersOf(name),
        (cs) => cs.length === 1 && cs[0]!.state === "running" && cs[0]!.id !== first.id,
      );
      expect((await inspect(second[0]!.id)).Config.Env).toContain("VERSION=2");
    });
  });

  test.concurrent("a commit that changes only a README leaves the same container", async () => {
    await scenario("readme change", async (env) => {
      const name = uniqueName("readme");
      const repo = await env.repo({ "compose.yaml": composeFile(), "README.md": "one\n" });
      const pg = await env.pgod([{ name, repository: repo.bare }]);
      const before = await waitRunning(name);
      await pg.waitForLog(new RegExp(`msg=deployed service=${name} `));
      const ups = pg.lines(composeExec(name, "up")).length;
      expect(ups).toBe(1);

      const commit = await repo.commit({ "README.md": "two\n" }, "docs only");
      await waitFor("the checkout at the README commit", () => headOf(join(pg.dir, name)), (h) => h === commit);
      const [seen] = await pg.waitForLog(new RegExp(`msg="new commit" service=${name} .*to=${commit.slice(0, 12)}`));
      expect(seen).toContain("redeploy=false");
      // Cycles hold the service's lock in turn, so the next cycle's `git ls-remote` means the
      // cycle that took the commit has finished: a redeploy would have run by then.
      await pg.waitForLog(lsRemote(pg.dir, name), { since: pg.log().length });

      expect(pg.lines(composeExec(name, "up")).length).toBe(ups);
      const after = await runningOf(name);
      expect(after.map((c) => c.id)).toEqual([before.id]);
    });
  });

  test.concurrent("a stop file brings the service down and removing it brings the service back", async () => {
    await scenario("stop file", async (env) => {
      const name = uniqueName("stop");
      const repo = await env.repo({ "compose.yaml": composeFile() });
      const pg = await env.pgod([{ name, repository: repo.bare }]);
      await waitRunning(name);
      const stopFile = join(pg.dir, `${name}.stop`);
      await writeFile(stopFile, "");
      await waitFor("no containers of the project", () => containersOf(name), (cs) => cs.length === 0);
      await pg.waitForLog(new RegExp(`msg="stop file present, bringing the service down" service=${name}`));
      await rm(stopFile);
      await waitRunning(name);
      await pg.waitForLog(new RegExp(`msg="stop file removed, bringing the service up" service=${name}`));
    });
  });

  test.concurrent("a container killed by hand is brought back", async () => {
    await scenario("killed", async (env) => {
      const name = uniqueName("kill");
      const repo = await env.repo({ "compose.yaml": composeFile() });
      const pg = await env.pgod([{ name, repository: repo.bare }]);
      const c = await waitRunning(name);
      // Kill it only once pgod counts the deploy done: killed while pgod still watches it settle,
      // the first deploy fails and is simply tried again, without the message looked for here.
      await pg.waitForLog(new RegExp(`msg=deployed service=${name} `));
      await run(["docker", "kill", c.id]);
      await pg.waitForLog(new RegExp(`msg="containers missing or not running, bringing them up" service=${name}`));
      const back = await waitRunning(name);
      expect((await inspect(back.id)).State.Running).toBe(true);
    });
  });

  test.concurrent("with the remote unreachable the containers keep running and the checkout stays", async () => {
    await scenario("remote unreachable", async (env) => {
      const name = uniqueName("offline");
      const repo = await env.repo({ "compose.yaml": composeFile({ env: { VERSION: "1" } }) });
      const pg = await env.pgod([{ name, repository: repo.bare }]);
      const before = await waitRunning(name);
      const checkout = join(pg.dir, name);
      const head = await headOf(checkout);
      expect(head).not.toBeNull();

      const away = `${repo.bare}.away`;
      await rename(repo.bare, away);
      const warn = new RegExp(`warn msg="cannot follow the remote, keeping what runs" service=${name}`);
      await pg.waitForLog(warn, { count: 3 });
      expect((await runningOf(name)).map((c) => c.id)).toEqual([before.id]);
      expect(await headOf(checkout)).toBe(head);
      expect(existsSync(join(checkout, "compose.yaml"))).toBe(true);
      expect(pg.exitCode).toBeNull();

      await rename(away, repo.bare);
      await repo.commit({ "compose.yaml": composeFile({ env: { VERSION: "2" } }) }, "version 2");
      const after = await waitFor(
        "a new running container after the remote is back",
        () => containersOf(name),
        (cs) => cs.length === 1 && cs[0]!.state === "running" && cs[0]!.id !== before.id,
      );
      expect((await inspect(after[0]!.id)).Config.Env).toContain("VERSION=2");
    });
  });

  test.concurrent("a service with a missing user fails alone while another service comes up", async () => {
    await scenario("missing user", async (env) => {
      const bad = uniqueName("nouser");
      const good = uniqueName("gooduser");
      const missing = "no-such-user-xyz";
      expect((await run(["getent", "passwd", missing], { check: false })).code).not.toBe(0);
      const repo = await env.repo({ "compose.yaml": composeFile() });
      const pg = await env.pgod([
        { name: bad, user: missing, repository: repo.bare },
        { name: good, repository: repo.bare },
      ]);
      const c = await waitRunning(good);
      const errors = await pg.waitForLog(new RegExp(`error msg="cycle failed" service=${bad} .*Cannot find user .*${missing}`), { count: 2 });
      expect(errors.length).toBeGreaterThanOrEqual(2);
      expect(await containersOf(bad)).toEqual([]);
      expect((await runningOf(good)).map((x) => x.id)).toEqual([c.id]);
      expect(pg.exitCode).toBeNull();
    });
  });

  test.concurrent("a service with a non-root user runs compose with that uid and without group 0", async () => {
    await scenario("non-root user", async (env) => {
      const name = uniqueName("user");
      const user = await env.user();
      const realDocker = Bun.which("docker");
      if (!realDocker) throw new Error("Cannot find docker on PATH");
      // A `docker` first on pgod's PATH that records who runs it, then runs the real one; it names
      // a compose plugin that records the same and runs the real plugin, so pgod's direct calls
      // of the plugin are seen too.
      const plugin = (await run(["docker", "info", "--format", '{{range .ClientInfo.Plugins}}{{if eq .Name "compose"}}{{.Path}}{{end}}{{end}}'], { check: false })).stdout.trim();
      expect(plugin).toEndWith("/docker-compose");
      const wrap = await env.tempDir(0o777);
      const record = join(wrap, "docker.log");
      await writeFile(record, "", { mode: 0o666 });
      await run(["chmod", "0666", record]);
      const recordLine = `printf '%s|%s|%s\\n' "$(id -u)" "$(id -G)"`;
      await writeFile(
        join(wrap, "docker"),
        `#!/bin/sh\n${recordLine} "$*" >> ${record}\n[ "$1" = info ] && { echo ${join(wrap, "docker-compose")}; exit 0; }\nexec ${realDocker} "$@"\n`,
        { mode: 0o755 },
      );
      await writeFile(join(wrap, "docker-compose"), `#!/bin/sh\n${recordLine} "compose $*" >> ${record}\nexec ${plugin} "$@"\n`, { mode: 0o755 });
      const repo = await env.repo({ "compose.yaml": composeFile() });
      await chownTree(repo.bare, user.uid, user.gid);
      const pg = await env.pgod([{ name, user: user.name, repository: repo.bare }], {
        env: { ...process.env, PATH: `${wrap}:${process.env["PATH"] ?? "/usr/bin:/bin"}` },
      });
      await waitRunning(name);

      const calls = (await Bun.file(record).text()).split("\n").filter(Boolean).map((l) => {
        const [uid = "", groups = "", argv = ""] = l.split("|");
        return { uid: Number(uid), groups: groups.split(" ").map(Number), argv };
      });
      const ups = calls.filter((c) => /^compose .*\bup\b/.test(c.argv));
      expect(ups.length).toBeGreaterThanOrEqual(1);
      // pgod itself asks `docker info` for the plugin, as root; everything else is the service's.
      for (const c of calls.filter((x) => !x.argv.startsWith("info "))) {
        expect(c.uid).toBe(user.uid);
        expect(c.groups).not.toContain(0);
      }
      await pg.waitForLog(new RegExp(`msg="running the docker compose plugin directly" path=${join(wrap, "docker-compose")}`));
      const st = statSync(join(pg.dir, name));
      expect(st.uid).toBe(user.uid);
      expect(st.mode & 0o777).toBe(0o700);
    });
  });

  test.concurrent("an invalid config change is ignored and a later valid change exits with status 2", async () => {
    await scenario("config change", async (env) => {
      const name = uniqueName("config");
      const repo = await env.repo({ "compose.yaml": composeFile() });
      const pg = await env.pgod([{ name, repository: repo.bare }]);
      await waitRunning(name);
      const valid = await Bun.file(pg.config).text();

      // Line 5 of the file: right after the three keys of configText().
      await writeFile(pg.config, `${valid.trimEnd()}\ncolour = "blue"\n`);
      const [problem] = await pg.waitForLog(new RegExp(`error msg=.*${pg.config.replaceAll(".", "\\.")}:5: .*colour`));
      expect(problem).toContain("Unknown key");
      await pg.waitForLog(/config file changed but is invalid, keeping the running config/);
      // Still reconciling: another cycle after the problem was reported.
      await pg.waitForLog(lsRemote(pg.dir, name), { since: pg.log().length });
      expect(pg.exitCode).toBeNull();

      await writeFile(pg.config, `# changed\n${valid}`);
      const changed = Date.now();
      const code = await pg.exitedWithin(15_000);
      expect(code).toBe(2);
      expect(Date.now() - changed).toBeLessThan(10_000);
      // Exiting for a restart leaves the service running.
      expect((await runningOf(name)).length).toBe(1);
    });
  });

  test.concurrent("SIGTERM makes pgod exit 0 and leaves the containers running", async () => {
    await scenario("sigterm", async (env) => {
      const name = uniqueName("term");
      const repo = await env.repo({ "compose.yaml": composeFile() });
      const pg = await env.pgod([{ name, repository: repo.bare }]);
      const c = await waitRunning(name);
      await pg.waitForLog(new RegExp(`msg=deployed service=${name} `));
      expect(await pg.signal("SIGTERM")).toBe(0);
      expect(pg.log()).toContain("msg=stopped code=0");
      expect((await runningOf(name)).map((x) => x.id)).toEqual([c.id]);
    });
  });

  test.concurrent("at startup a project no longer configured is brought down and its checkout removed, others are left alone", async () => {
    await scenario("stale cleanup", async (env) => {
      const gone = uniqueName("gone");
      const kept = uniqueName("kept");
      const other = env.project(`other-${uniqueName("else")}`);
      const repo = await env.repo({ "compose.yaml": composeFile() });

      const first = await env.pgod([{ name: gone, repository: repo.bare }, { name: kept, repository: repo.bare }], { tag: "first" });
      await Promise.all([waitRunning(gone), waitRunning(kept)]);
      expect(await first.signal("SIGTERM")).toBe(0);

      // A project started by hand elsewhere; pgod must never touch it.
      const elsewhere = await env.tempDir();
      await writeFile(join(elsewhere, "compose.yaml"), composeFile());
      await run(["docker", "compose", "--project-name", other, "up", "--detach"], { cwd: elsewhere });
      const otherBefore = await waitRunning(other);
      const keptBefore = await waitRunning(kept);
      expect(existsSync(gitDirOf(join(env.dir, gone)))).toBe(true);
      for (const p of [join(".state", gone, "history"), join(".docker", gone)]) expect([p, existsSync(join(env.dir, p))]).toEqual([p, true]);
      const { datadir } = env.paths();
      expect(existsSync(join(datadir, gone))).toBe(true);

      const second = await env.pgod([{ name: kept, repository: repo.bare }], { tag: "second" });
      // Stale projects are handled before the loops start.
      await second.waitForLog(/msg=starting /);
      expect(second.lines(new RegExp(`msg="bringing down a project that is no longer configured" project=${gone}`)).length).toBe(1);
      expect(await containersOf(gone)).toEqual([]);
      expect(existsSync(join(env.dir, gone))).toBe(false);
      // Its state and DOCKER_CONFIG folders go with it; its data directory stays.
      for (const p of [join(".state", gone), join(".docker", gone)]) expect([p, existsSync(join(env.dir, p))]).toEqual([p, false]);
      expect(existsSync(join(datadir, gone))).toBe(true);
      expect(existsSync(join(env.dir, ".state", kept, "history"))).toBe(true);
      expect(existsSync(gitDirOf(join(env.dir, gone)))).toBe(false);
      expect((await runningOf(other)).map((c) => c.id)).toEqual([otherBefore.id]);
      expect(second.lines(new RegExp(`project=(${other}|${kept})\\b`))).toEqual([]);
      const keptAfter = await waitRunning(kept);
      expect(keptAfter.id).toBe(keptBefore.id);
      expect(existsSync(join(env.dir, kept, "compose.yaml"))).toBe(true);
    });
  });
});
