import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { COMMANDS } from "../src/commands.ts";
import { SERVICE_KEYS } from "../src/config.ts";
import { PGOD_FLAGS, pgodUsage } from "../src/flags.ts";
import { USAGE as PGOCTL_USAGE } from "../src/pgoctl.ts";
import { RULES } from "../src/policy.ts";
import { CIPHER_ALGORITHMS, HOST_KEY_ALGORITHMS, KEX_ALGORITHMS, MAC_ALGORITHMS } from "../src/ssh_protocol.ts";

const man = (f: string): string => readFileSync(join(import.meta.dir, "..", "man", f), "utf8");
/** roff source with escaped hyphens made plain, for searching. */
const plain = (s: string): string => s.replace(/\\-/g, "-");
const pgod = plain(man("pgod.8"));
const pgoctl = plain(man("pgoctl.1"));

/** The names in `names` that `page` does not mention as `test` demands: [] when all are there. */
const missing = (names: readonly string[], has: (n: string) => boolean): string[] => names.filter((n) => !has(n));

test("every flag in pgod --help is in pgod(8) with its default", () => {
  expect(missing(PGOD_FLAGS.map((f) => `--${f.long}`), (n) => pgod.includes(n))).toEqual([]);
  expect(missing(PGOD_FLAGS.flatMap((f) => (f.short ? [`-${f.short}`] : [])), (n) => pgod.includes(n))).toEqual([]);
  expect(missing(PGOD_FLAGS.filter((f) => f.kind !== "bool" && f.def !== "").map((f) => f.def), (n) => pgod.includes(n))).toEqual([]);
  expect(missing(pgodUsage().match(/--[a-z-]+/g) ?? [], (n) => pgod.includes(n))).toEqual([]);
});

test("every config key the parser accepts is in pgod(8) with an example", () => {
  expect(missing(SERVICE_KEYS, (k) => new RegExp(`^\\.B ${k}\\n`, "m").test(pgod))).toEqual([]);
  expect(missing(SERVICE_KEYS, (k) => new RegExp(`^\\.B ${k} = `, "m").test(pgod))).toEqual([]);
});

test("every compose policy rule's key is in pgod(8)", () => {
  expect(missing(RULES.flatMap((r) => r.key.split("|").map((k) => k.replace(/\..*$/, ""))), (k) => pgod.includes(k))).toEqual([]);
});

test("the SSH algorithms offered are the ones pgod(8) lists", () => {
  expect(missing([...KEX_ALGORITHMS, ...CIPHER_ALGORITHMS, ...MAC_ALGORITHMS, ...HOST_KEY_ALGORITHMS], (a) => pgod.includes(a))).toEqual([]);
});

test("every pgoctl command and option is in pgoctl(1)", () => {
  expect(missing(COMMANDS, (c) => new RegExp(`^\\.B(R)? ${c}\\b`, "m").test(pgoctl))).toEqual([]);
  expect(missing(PGOCTL_USAGE.match(/(?<![\w-])--?[a-z][a-z-]*/g) ?? [], (f) => pgoctl.includes(f))).toEqual([]);
});

test("man renders both pages without warnings", () => {
  for (const f of ["pgod.8", "pgoctl.1"]) {
    const r = Bun.spawnSync(["man", "-P", "cat", "--warnings", "-l", join(import.meta.dir, "..", "man", f)], {
      env: { PATH: "/usr/bin:/bin", MANWIDTH: "80", LC_ALL: "C.UTF-8" },
    });
    expect({ file: f, status: r.exitCode, warnings: r.stderr.toString() }).toEqual({ file: f, status: 0, warnings: "" });
    expect(r.stdout.toString().length).toBeGreaterThan(2000);
  }
}, 60_000);
