import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { COMMANDS } from "../src/commands.ts";
import { SERVICE_KEYS } from "../src/config_service.ts";
import { PGOD_FLAGS, pgodUsage } from "../src/flags.ts";
import { USAGE as PGOCTL_USAGE } from "../src/pgoctl.ts";
import { RULES } from "../src/policy.ts";
import { DEFAULT_LONG_RUNNING } from "../src/long_running.ts";
import { CIPHER_ALGORITHMS, HOST_KEY_ALGORITHMS, KEX_ALGORITHMS, MAC_ALGORITHMS } from "../src/ssh_protocol.ts";
import { DEFAULT_LIMITS } from "../src/ssh_limits.ts";

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

test("every compose policy rule is in pgod(8) by name, with its reason", () => {
  const flat = pgod.replace(/\n/g, " ");
  expect(missing(RULES.map((r) => `${r.reason} (rule \\fB${r.rule}\\fR)`), (n) => flat.includes(n))).toEqual([]);
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

const renderedPages = new Map<string, string>();

/** A page as man renders it at 80 columns, as plain text (overstrikes removed). */
function rendered(f: string): string {
  const done = renderedPages.get(f);
  if (done !== undefined) return done;
  const r = Bun.spawnSync(["man", "-P", "cat", "-l", join(import.meta.dir, "..", "man", f)], {
    env: { PATH: "/usr/bin:/bin", MANWIDTH: "80", LC_ALL: "C.UTF-8", MAN_KEEP_FORMATTING: "" },
  });
  if (r.exitCode !== 0) throw new Error(`man -l ${f} exited ${r.exitCode}: ${r.stderr.toString()}`);
  const text = r.stdout.toString().replace(/.\x08/g, "").replace(/\x1b\[[0-9;]*m/g, "");
  renderedPages.set(f, text);
  return text;
}

test("both pages render at 80 columns with no wider line, no literal triple quotes and no words run together", () => {
  for (const f of ["pgod.8", "pgoctl.1"]) {
    const text = rendered(f);
    const wide = text.split("\n").filter((l) => [...l].length > 80);
    expect({ file: f, wide }).toEqual({ file: f, wide: [] });
    expect({ file: f, tripleQuotes: text.includes('"""') }).toEqual({ file: f, tripleQuotes: false });
    expect({ file: f, rolledback: /rolledback/.test(text) }).toEqual({ file: f, rolledback: false });
  }
  expect(rendered("pgod.8")).toContain('pgo_deploys_total{result="rolled back"}');
  expect(rendered("pgod.8")).toMatch(/registries = \["deploy:s3cret@registry\.example\.org"\]/);
  expect(rendered("pgod.8")).toMatch(/env = \["SITE_TITLE=Shop", "LOG_LEVEL=info"\]/);
  expect(rendered("pgod.8")).toMatch(/networks = \["reverseproxy"\]/);
}, 60_000);

test("the rendered pages have their sections, pgoctl(1) with FILES and HOME, USER and LOGNAME", () => {
  const sections = (text: string): string[] => text.split("\n").filter((l) => /^[A-Z][A-Z ]+$/.test(l));
  const pgodSections = sections(rendered("pgod.8"));
  const pgoctlText = rendered("pgoctl.1");
  for (const s of ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "FILES", "ENVIRONMENT", "EXIT STATUS", "SEE ALSO"]) {
    expect({ page: "pgod.8", section: s, present: pgodSections.includes(s) }).toEqual({ page: "pgod.8", section: s, present: true });
  }
  for (const s of ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "ENVIRONMENT", "FILES", "SEE ALSO"]) {
    expect({ page: "pgoctl.1", section: s, present: sections(pgoctlText).includes(s) }).toEqual({ page: "pgoctl.1", section: s, present: true });
  }
  const env = pgoctlText.slice(pgoctlText.indexOf("\nENVIRONMENT\n"), pgoctlText.indexOf("\nFILES\n"));
  for (const v of ["PGOCTL_ID", "HOME", "USER", "LOGNAME"]) expect({ variable: v, documented: new RegExp(`^ {7}(\\S+, )?${v}\\b`, "m").test(env) }).toEqual({ variable: v, documented: true });
  const files = pgoctlText.slice(pgoctlText.indexOf("\nFILES\n"));
  expect(files).toContain("~/.ssh/known_hosts");
}, 60_000);

test("the SSH and long-running limits pgod(8) and pgoctl(1) give are the ones in the code", () => {
  const text = rendered("pgod.8").replace(/\s+/g, " ");
  expect(text).toContain(`Logged-in connections: ${DEFAULT_LIMITS.maxAuthenticated} in all`);
  expect(text).toContain(
    `Once ${DEFAULT_LIMITS.busyFrom} are logged in, a key that has ${DEFAULT_LIMITS.maxPerKey} of them, or a client address that has ${DEFAULT_LIMITS.maxPerAddress},`,
  );
  expect(text).toContain(`within ${DEFAULT_LIMITS.execWaitMs / 1000} seconds of logging in`);
  expect(text).toContain(`at most ${DEFAULT_LONG_RUNNING.perService} at once for one service`);
  expect(text).toContain(`at most ${DEFAULT_LONG_RUNNING.perKey} at once for one key`);
  expect(text).toContain(`One more waits up to ${DEFAULT_LONG_RUNNING.waitMs / 1000} seconds for a free slot`);
  const ctl = rendered("pgoctl.1").replace(/\s+/g, " ");
  expect(ctl).toContain(`at most ${DEFAULT_LONG_RUNNING.perService} exec or logs -f for one service, and at most ${DEFAULT_LONG_RUNNING.perKey} for one key`);
  expect(ctl).toContain(`waits up to ${DEFAULT_LONG_RUNNING.waitMs / 1000} seconds`);
  expect(ctl).toContain(`while all clients have ${DEFAULT_LIMITS.maxAuthenticated} connections open to pgod, or while ${DEFAULT_LIMITS.busyFrom} are open and the key already has ${DEFAULT_LIMITS.maxPerKey} of them or its address ${DEFAULT_LIMITS.maxPerAddress}`);
}, 60_000);
