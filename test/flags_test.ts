import { expect, test } from "bun:test";
import { formatDuration, parseDuration } from "../src/duration.ts";
import { UsageError } from "../src/errors.ts";
import { parsePgodFlags, pgodUsage, PGOD_FLAGS } from "../src/flags.ts";

test("parsePgodFlags() gives the documented defaults", () => {
  expect(parsePgodFlags([])).toEqual({
    config: "/etc/pgo.toml", dir: "/var/lib/pgo", ssh: ":2222", metrics: ":9112", webhook: "", durationMs: 300_000,
    datadir: "/data", debug: false, restart: true, version: false, help: false,
  });
});

test("parsePgodFlags() takes short, long and = forms", () => {
  const f = parsePgodFlags(["-c", "/x.toml", "--dir=/d", "-t", "1h30m", "--datadir", "/dd", "--debug", "--restart=false", "-s", "127.0.0.1:0", "--metrics=:0"]);
  expect(f).toMatchObject({ config: "/x.toml", dir: "/d", durationMs: 5_400_000, datadir: "/dd", debug: true, restart: false, ssh: "127.0.0.1:0", metrics: ":0" });
});

test("parsePgodFlags() rejects an unknown flag, a missing value and a bad duration clearly", () => {
  expect(() => parsePgodFlags(["--bogus"])).toThrow(new UsageError('Unknown option "--bogus"'));
  expect(() => parsePgodFlags(["-c"])).toThrow(new UsageError('Option "-c" needs a value'));
  expect(() => parsePgodFlags(["-t", "5 minutes"])).toThrow(/Invalid value "5 minutes" for "-t"/);
  expect(() => parsePgodFlags(["--restart=maybe"])).toThrow('Invalid value "maybe" for "--restart": expected true or false');
  expect(() => parsePgodFlags(["stray"])).toThrow('Unexpected argument "stray": pgod takes only options');
  expect(() => parsePgodFlags(["-t", "10ms"])).toThrow("must be at least 1s");
});

test("--help lists every flag with its default", () => {
  const u = pgodUsage();
  for (const f of PGOD_FLAGS) expect(u).toContain(`--${f.long}`);
  expect(u).toContain("(default 5m0s)");
  expect(u).toContain("(default /etc/pgo.toml)");
});

test("parseDuration() reads Go durations", () => {
  expect(parseDuration("5m0s")).toBe(300_000);
  expect(parseDuration("90s")).toBe(90_000);
  expect(parseDuration("1h30m")).toBe(5_400_000);
  expect(parseDuration("1.5s")).toBe(1500);
  expect(parseDuration("250ms")).toBe(250);
  expect(() => parseDuration("5")).toThrow();
  expect(() => parseDuration("m")).toThrow();
  expect(() => parseDuration("")).toThrow();
  expect(formatDuration(300_000)).toBe("5m0s");
});

test("parsePgodFlags() takes the original pgod's command lines: --metric, attached short values and = forms", () => {
  // Every long flag of the original pgod (cmd/pgod/main.go): config, ssh, metric, dir, datadir, debug, restart, version, duration.
  const original = [
    "--config", "/etc/pgo.toml", "--ssh", ":2222", "--metric", "127.0.0.1:9112", "--dir", "/var/lib/pgo", "--datadir", "/srv/data",
    "--debug", "--restart=false", "--duration", "5m",
  ];
  expect(parsePgodFlags(original)).toMatchObject({
    config: "/etc/pgo.toml", ssh: ":2222", metrics: "127.0.0.1:9112", dir: "/var/lib/pgo", datadir: "/srv/data", debug: true, restart: false, durationMs: 300_000,
  });
  expect(parsePgodFlags(["--metric=:9200"]).metrics).toBe(":9200");
  expect(parsePgodFlags(["-m", ":9300"]).metrics).toBe(":9300");
  expect(parsePgodFlags(["--version"]).version).toBe(true);
  expect(parsePgodFlags(["-t30s", "-c/x.toml", "-d=/d"])).toMatchObject({ durationMs: 30_000, config: "/x.toml", dir: "/d" });
  expect(() => parsePgodFlags(["--metricz"])).toThrow(new UsageError('Unknown option "--metricz"'));
});

test("pgod(8) names every alias of a flag and says what differs from the original", async () => {
  const page = await Bun.file(new URL("../man/pgod.8", import.meta.url)).text();
  for (const f of PGOD_FLAGS) for (const a of f.aliases ?? []) expect(page).toMatch(new RegExp(`\\\\-\\\\-${a}\\b`));
  expect(page).toContain(".SS Differences from the original pgod");
});
