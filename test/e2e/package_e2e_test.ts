/**
 * The Debian package on this machine, as root: `scripts/package.sh` builds it, `dpkg -i` installs
 * it, the installed programs, manual pages, config and unit are checked, `dpkg -r` and
 * `dpkg --purge` remove it, and lintian reads it. A pgo package left installed (by an earlier,
 * interrupted run) is purged before and after. Takes about a minute, most of it lintian reading
 * the two 110 MB executables.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { closeSync, existsSync, lstatSync, openSync, readFileSync, statSync } from "node:fs";
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
import { parseConfig } from "../../src/config.ts";
import { run, waitFor } from "./harness.ts";
import type { Ran } from "./harness.ts";

const ROOT = resolve(import.meta.dir, "../..");
/** CPU-heavy steps run at the lowest priority: other end-to-end files measure latencies meanwhile. */
const NICE = ["nice", "-n", "19"];
const SYS_ENV = { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C.UTF-8", DEBIAN_FRONTEND: "noninteractive" };
const sys = (argv: string[], check = true): Promise<Ran> => run(argv, { env: SYS_ENV, check });

/** Every path the package ships, directories with a trailing slash. */
const SHIPPED = [
  "etc/pgo.toml",
  "lib/systemd/system/pgod.service",
  "usr/bin/pgod",
  "usr/bin/pgoctl",
  "usr/share/doc/pgo/README.md",
  "usr/share/doc/pgo/changelog.Debian.gz",
  "usr/share/doc/pgo/copyright",
  "usr/share/doc/pgo/examples/pgo.toml",
  "usr/share/lintian/overrides/pgo",
  "usr/share/man/man1/pgoctl.1.gz",
  "usr/share/man/man8/pgod.8.gz",
  "var/lib/pgo/",
];

/** The link `systemctl enable pgod` makes. */
const ENABLED = "/etc/systemd/system/multi-user.target.wants/pgod.service";

let deb = "";
/** What `dist/pgod -v` reports: the version baked into the executables. */
let upstream = "";
let lintian: Promise<Ran> | null = null;

async function installed(): Promise<string> {
  const r = await sys(["dpkg-query", "--show", "--showformat", "${db:Status-Status}", "pgo"], false);
  return r.code === 0 ? r.stdout.trim() : "not-installed";
}

async function purgeLeftover(): Promise<void> {
  if ((await installed()) !== "not-installed") await sys(["dpkg", "--purge", "pgo"]);
}

beforeAll(async () => {
  await purgeLeftover();
  const built = await run([...NICE, "bash", "scripts/package.sh"], { cwd: ROOT });
  deb = resolve(ROOT, built.stdout.trim().split("\n").at(-1) ?? "");
  upstream = (await run([join(ROOT, "dist", "pgod"), "-v"])).stdout.trim().replace(/^pgod /, "");
  // lintian needs half a minute for the two executables: it runs while the other tests do.
  lintian = run([...NICE, "lintian", "--no-tag-display-limit", deb], { env: SYS_ENV, check: false });
}, { timeout: 240_000 });

afterAll(async () => {
  await lintian?.catch(() => null);
  await purgeLeftover();
});

describe("the Debian package", () => {
  test("build-deb.sh --debian-version turns git describe output into valid Debian versions", async () => {
    const base = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version as string;
    const head = (await run(["git", "-C", ROOT, "rev-parse", "--short=7", "HEAD"])).stdout.trim();
    const count = (await run(["git", "-C", ROOT, "rev-list", "--count", "HEAD"])).stdout.trim();
    const cases: Array<[string, string]> = [
      ["v1.2.0", "1.2.0"],
      ["v1.2.0-3-gabc1234", "1.2.0+git3.gabc1234"],
      ["1.3.0-rc1", "1.3.0~rc1"],
      ["v1.3.0-rc1-2-gdeadbee-dirty", "1.3.0~rc1+git2.gdeadbee+dirty"],
      [head, `${base}~git${count}.g${head}`],
      [`${head}-dirty`, `${base}~git${count}.g${head}+dirty`],
      ["dev", `${base}~dev`],
      ["odd version/1", `${base}~odd.version.1`],
    ];
    for (const [given, want] of cases) {
      const r = await run(["bash", "packaging/build-deb.sh", "--debian-version", given], { cwd: ROOT });
      expect({ given, got: r.stdout.trim() }).toEqual({ given, got: want });
      expect((await sys(["dpkg", "--validate-version", `${want}-1`], false)).code).toBe(0);
    }
  });

  test("scripts/package.sh makes a .deb with pgo's control fields, files and conffile", async () => {
    const arch = (await sys(["dpkg", "--print-architecture"])).stdout.trim();
    const version = `${(await run(["bash", "packaging/build-deb.sh", "--debian-version", upstream], { cwd: ROOT })).stdout.trim()}-1`;
    expect(basename(deb)).toBe(`pgo_${version}_${arch}.deb`);
    const field = async (f: string): Promise<string> => (await sys(["dpkg-deb", "--field", deb, f])).stdout.trim();
    expect(await field("Package")).toBe("pgo");
    expect(await field("Version")).toBe(version);
    expect(await field("Architecture")).toBe(arch);
    const depends = await field("Depends");
    expect(depends).toMatch(/^libc6 \(>= [0-9.]+\), git, procps, docker\.io \| docker-ce$/);
    expect(await field("Section")).toBe("admin");

    const listing = (await sys(["dpkg-deb", "--contents", deb])).stdout;
    const files = listing.split("\n").filter(Boolean).map((l) => l.split(/\s+/));
    const paths = new Set(files.map((f) => f.at(-1)!.replace(/^\.\//, "")));
    for (const p of SHIPPED) expect(paths).toContain(p);
    for (const f of files) expect(f[1]).toBe("root/root");
    const mode = (p: string): string | undefined => files.find((f) => f.at(-1) === `./${p}`)?.[0];
    expect([mode("usr/bin/pgod"), mode("usr/bin/pgoctl"), mode("etc/pgo.toml"), mode("var/lib/pgo/")])
      .toEqual(["-rwxr-xr-x", "-rwxr-xr-x", "-rw-r-----", "drwx--x--x"]);

    expect((await sys(["dpkg-deb", "--info", deb, "conffiles"])).stdout).toBe("/etc/pgo.toml\n");
    const md5 = (await sys(["dpkg-deb", "--info", deb, "md5sums"])).stdout;
    expect(md5).toMatch(/^[0-9a-f]{32} {2}usr\/bin\/pgod$/m);
    expect(md5).not.toContain("etc/pgo.toml");
  });

  test("the shipped /etc/pgo.toml is a valid config with no services, and the example is valid", () => {
    const shipped = join(ROOT, "packaging", "pgo.toml");
    expect(parseConfig(readFileSync(shipped, "utf8"), shipped).services).toEqual([]);
    const example = join(ROOT, "examples", "pgo.toml");
    expect(parseConfig(readFileSync(example, "utf8"), example).services.length).toBeGreaterThan(0);
  });

  test("the copyright file names every package bundled into the executables, and no other", () => {
    const manifest = (dir: string): { dependencies?: Record<string, string> } =>
      JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
    const pkg = (name: string): { dependencies?: Record<string, string> } => manifest(join(ROOT, "node_modules", name));
    // optionalDependencies stay out: ssh2's cpu-features is --external and nan is C++ headers.
    const bundled = new Set<string>();
    const visit = (name: string): void => {
      if (bundled.has(name)) return;
      bundled.add(name);
      for (const d of Object.keys(pkg(name).dependencies ?? {})) visit(d);
    };
    for (const d of Object.keys(manifest(ROOT).dependencies ?? {})) visit(d);
    const copyright = readFileSync(join(ROOT, "packaging", "debian", "copyright"), "utf8");
    const listed = new Set([...copyright.matchAll(/^Files: node_modules\/(.+)\/\*$/gm)].map((m) => m[1]!));
    expect([...listed].sort()).toEqual([...bundled].sort());
  });

  test("dpkg -i installs pgod, pgoctl, their manual pages, the config and the unit, and starts nothing", async () => {
    await run([...NICE, "dpkg", "--install", deb], { env: SYS_ENV });
    expect(await installed()).toBe("installed");
    expect((await sys(["/usr/bin/pgod", "-v"])).stdout).toBe(`pgod ${upstream}\n`);
    expect((await sys(["/usr/bin/pgoctl", "-v"])).stdout).toBe(`pgoctl ${upstream}\n`);
    for (const page of ["pgod", "pgoctl"]) {
      const r = await run(["man", "--warnings", "-P", "cat", page], { env: { ...SYS_ENV, MANWIDTH: "80" } });
      expect({ page, stderr: r.stderr }).toEqual({ page, stderr: "" });
      expect(r.stdout).toContain(`${page.toUpperCase()}(`);
      expect(r.stdout.length).toBeGreaterThan(2000);
    }
    expect(readFileSync("/etc/pgo.toml", "utf8")).toBe(readFileSync(join(ROOT, "packaging", "pgo.toml"), "utf8"));
    // It holds secrets once the admin fills it in: root's alone.
    const config = statSync("/etc/pgo.toml");
    expect({ mode: (config.mode & 0o7777).toString(8), uid: config.uid, gid: config.gid }).toEqual({ mode: "640", uid: 0, gid: 0 });
    expect(readFileSync("/lib/systemd/system/pgod.service", "utf8"))
      .toBe(readFileSync(join(ROOT, "packaging", "pgod.service"), "utf8"));
    const state = statSync("/var/lib/pgo");
    expect({ dir: state.isDirectory(), mode: (state.mode & 0o7777).toString(8) }).toEqual({ dir: true, mode: "711" });
    // Every shipped file matches its md5sum.
    expect((await sys(["dpkg", "--verify", "pgo"], false)).stdout).toBe("");
    // The admin enables pgod after writing the config; the package does not.
    expect(lstatSync(ENABLED, { throwIfNoEntry: false })).toBeUndefined();

    const verify = await sys(["systemd-analyze", "verify", "/lib/systemd/system/pgod.service"], false);
    expect({ code: verify.code, pgod: `${verify.stdout}${verify.stderr}`.split("\n").filter((l) => l.includes("pgod")) })
      .toEqual({ code: 0, pgod: [] });
  });

  test("the unit's sandboxing keeps systemd-analyze security's exposure at 4.9 or below", async () => {
    const r = await sys(["systemd-analyze", "security", "--offline=true", "--no-pager", "/lib/systemd/system/pgod.service"]);
    const m = /Overall exposure level for pgod\.service: ([0-9.]+)/.exec(r.stdout);
    expect(m).not.toBeNull();
    expect(Number(m![1])).toBeLessThanOrEqual(4.9);
  });

  test("the installed pgod starts on the shipped config, answers /healthz and exits 0 on SIGTERM", async () => {
    const tmp = await mkdtemp(join(tmpdir(), "pgo-package-"));
    try {
      const log = join(tmp, "pgod.log");
      await mkdir(join(tmp, "dir"));
      const fd = openSync(log, "a");
      const proc = Bun.spawn(
        ["/usr/bin/pgod", "-c", "/etc/pgo.toml", "-d", join(tmp, "dir"), "--datadir", join(tmp, "data"),
          "-s", "127.0.0.1:0", "-m", "127.0.0.1:0"],
        { cwd: "/", env: SYS_ENV, stdin: "ignore", stdout: fd, stderr: fd },
      );
      closeSync(fd);
      try {
        const line = await waitFor(
          "pgod's metrics server",
          () => {
            if (proc.exitCode !== null) throw new Error(`pgod exited with ${proc.exitCode}: ${readFileSync(log, "utf8")}`);
            return readFileSync(log, "utf8");
          },
          (text) => /msg="metrics server listening" address=127\.0\.0\.1:\d+/.test(text) && /msg="SSH server listening"/.test(text),
          { timeoutMs: 30_000 },
        );
        expect(line).toMatch(/msg=starting services=0 config=\/etc\/pgo\.toml/);
        const port = /msg="metrics server listening" address=127\.0\.0\.1:(\d+)/.exec(line)![1];
        const health = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(10_000) });
        expect(health.status).toBe(200);
      } finally {
        proc.kill("SIGTERM");
      }
      expect(await proc.exited).toBe(0);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  });

  test("dpkg -r keeps the edited config, and dpkg --purge removes it, pgod's state and the enable link", async () => {
    // What an admin does after installing: edit the config, enable pgod, and let it make state.
    await writeFile("/etc/pgo.toml", `${readFileSync("/etc/pgo.toml", "utf8")}# edited by the admin\n`);
    // A config left world-readable (as packages before 0640 installed it) loses that at the next
    // configure; the admin's edit stays.
    await chmod("/etc/pgo.toml", 0o644);
    await run([...NICE, "dpkg", "--install", deb], { env: SYS_ENV });
    expect((statSync("/etc/pgo.toml").mode & 0o7777).toString(8)).toBe("640");
    expect(readFileSync("/etc/pgo.toml", "utf8")).toEndWith("# edited by the admin\n");
    await sys(["systemctl", "enable", "pgod.service"]);
    expect(existsSync(ENABLED)).toBe(true);
    await writeFile("/var/lib/pgo/ssh_host_ed25519_key", "state pgod keeps\n");
    const gone = ["/usr/bin/pgod", "/usr/bin/pgoctl", "/lib/systemd/system/pgod.service",
      "/usr/share/man/man8/pgod.8.gz", "/usr/share/man/man1/pgoctl.1.gz", "/usr/share/doc/pgo"];

    await sys(["dpkg", "--remove", "pgo"]);
    expect(await installed()).toBe("config-files");
    expect(gone.filter((p) => existsSync(p))).toEqual([]);
    expect(readFileSync("/etc/pgo.toml", "utf8")).toEndWith("# edited by the admin\n");

    await sys(["dpkg", "--purge", "pgo"]);
    expect(await installed()).toBe("not-installed");
    expect(["/etc/pgo.toml", "/var/lib/pgo", ...gone].filter((p) => existsSync(p))).toEqual([]);
    // lstat: the link dangles once the unit is gone, which existsSync would not see.
    expect(lstatSync(ENABLED, { throwIfNoEntry: false })).toBeUndefined();
    expect(existsSync("/var/lib/systemd/deb-systemd-helper-enabled/pgod.service.dsh-also")).toBe(false);
  });

  test("lintian finds no errors in the package", async () => {
    const r = await lintian!;
    const lines = `${r.stdout}${r.stderr}`.split("\n").filter((l) => /^[EW]: /.test(l));
    if (lines.length > 0) console.log(`lintian:\n${lines.join("\n")}`);
    expect(lines.filter((l) => l.startsWith("E: "))).toEqual([]);
  });
});
