import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { COMMANDS } from "../src/commands.ts";
import { SERVICE_KEYS } from "../src/config.ts";
import { PGOD_FLAGS, pgodUsage } from "../src/flags.ts";
import { USAGE as PGOCTL_USAGE } from "../src/pgoctl.ts";
import { RULES } from "../src/policy.ts";
import { CIPHER_ALGORITHMS, HOST_KEY_ALGORITHMS, KEX_ALGORITHMS, MAC_ALGORITHMS } from "../src/ssh_server.ts";

const man = (f: string): string => readFileSync(join(import.meta.dir, "..", "man", f), "utf8");
/** roff source with escaped hyphens made plain, for searching. */
const plain = (s: string): string => s.replace(/\\-/g, "-");
const pgod = plain(man("pgod.8"));
const pgoctl = plain(man("pgoctl.1"));

test("every flag in pgod --help is in pgod(8) with its default", () => {
  for (const f of PGOD_FLAGS) {
    expect(pgod).toContain(`--${f.long}`);
    if (f.short) expect(pgod).toContain(`-${f.short}`);
    if (f.kind !== "bool") expect(pgod).toContain(f.def);
  }
  for (const flag of pgodUsage().match(/--[a-z-]+/g) ?? []) expect(pgod).toContain(flag);
});

test("every config key the parser accepts is in pgod(8) with an example", () => {
  for (const k of SERVICE_KEYS) {
    expect(pgod).toMatch(new RegExp(`^\\.B ${k}\\n`, "m"));
    expect(pgod).toMatch(new RegExp(`^\\.B ${k} = `, "m"));
  }
});

test("every compose policy rule's key is in pgod(8)", () => {
  for (const r of RULES) for (const k of r.key.split("|")) expect(pgod).toContain(k.replace(/\..*$/, ""));
});

test("the SSH algorithms offered are the ones pgod(8) lists", () => {
  for (const a of [...KEX_ALGORITHMS, ...CIPHER_ALGORITHMS, ...MAC_ALGORITHMS, ...HOST_KEY_ALGORITHMS]) expect(pgod).toContain(a);
});

test("every pgoctl command and option is in pgoctl(1)", () => {
  for (const c of COMMANDS) expect(pgoctl).toMatch(new RegExp(`\\b${c}\\b`));
  for (const flag of PGOCTL_USAGE.match(/(?<![\w-])--?[a-z][a-z-]*/g) ?? []) expect(pgoctl).toContain(flag);
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
