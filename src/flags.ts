/** pgod's command line. */
import { parseDuration } from "./duration.ts";
import { UsageError } from "./errors.ts";

export interface PgodFlags {
  config: string;
  dir: string;
  ssh: string;
  metrics: string;
  webhook: string;
  durationMs: number;
  datadir: string;
  debug: boolean;
  restart: boolean;
  version: boolean;
  help: boolean;
}

interface FlagSpec {
  long: string;
  /** Other long names accepted, such as the original pgod's `--metric`. */
  aliases?: readonly string[];
  short?: string;
  kind: "string" | "bool" | "duration";
  key: keyof PgodFlags;
  def: string;
  help: string;
}

/** Every flag, in the order `--help` lists them (the manual test reads this too). */
export const PGOD_FLAGS: readonly FlagSpec[] = [
  { long: "config", short: "c", kind: "string", key: "config", def: "/etc/pgo.toml", help: "config file to read" },
  { long: "dir", short: "d", kind: "string", key: "dir", def: "/var/lib/pgo", help: "directory for checkouts, stop files and state" },
  { long: "ssh", short: "s", kind: "string", key: "ssh", def: ":2222", help: "address of the SSH server" },
  { long: "metrics", aliases: ["metric"], short: "m", kind: "string", key: "metrics", def: ":9112", help: "address of the HTTP server for /metrics and /healthz" },
  { long: "webhook", kind: "string", key: "webhook", def: "", help: "address of the HTTP server for push webhooks (off unless given)" },
  { long: "duration", short: "t", kind: "duration", key: "durationMs", def: "5m0s", help: "base interval between polls (Go duration, jittered up to +50%)" },
  { long: "datadir", kind: "string", key: "datadir", def: "/data", help: "root of the per-service data directories" },
  { long: "debug", kind: "bool", key: "debug", def: "false", help: "log every command run" },
  { long: "restart", kind: "bool", key: "restart", def: "true", help: "exit 2 when the config file changes to a valid one (--restart=false turns it off)" },
  { long: "version", short: "v", kind: "bool", key: "version", def: "false", help: "print the version and exit" },
  { long: "help", short: "h", kind: "bool", key: "help", def: "false", help: "print this help and exit" },
];

/** The `--help` text. */
export function pgodUsage(): string {
  const lines = PGOD_FLAGS.map((f) => {
    const names = `${f.short ? `-${f.short}, ` : "    "}--${f.long}${f.kind === "bool" ? "" : " VALUE"}`;
    return `  ${names.padEnd(26)} ${f.help}${(f.kind === "bool" && f.def === "false") || f.def === "" ? "" : ` (default ${f.def})`}`;
  });
  return `Usage: pgod [OPTION]...\nKeep docker compose projects in step with their git repositories.\n\n${lines.join("\n")}\n`;
}

/** Parses pgod's arguments; throws UsageError with a clear message. */
export function parsePgodFlags(argv: readonly string[]): PgodFlags {
  const out: Record<string, unknown> = {};
  for (const f of PGOD_FLAGS) out[f.key] = convert(f, f.def);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith("-") || arg === "-" || arg === "--") {
      throw new UsageError(`Unexpected argument "${arg}": pgod takes only options`);
    }
    const eq = arg.indexOf("=");
    let name = eq >= 0 ? arg.slice(0, eq) : arg;
    let value: string | undefined = eq >= 0 ? arg.slice(eq + 1) : undefined;
    if (!name.startsWith("--") && name.length > 2) {
      // As the original's flag library takes it: a short option with its value attached (`-t30s`).
      value = arg.slice(2);
      name = arg.slice(0, 2);
    }
    const spec = name.startsWith("--")
      ? PGOD_FLAGS.find((f) => f.long === name.slice(2) || f.aliases?.includes(name.slice(2)))
      : PGOD_FLAGS.find((f) => f.short !== undefined && f.short === name.slice(1));
    if (!spec) throw new UsageError(`Unknown option "${name}"`);
    if (spec.kind === "bool") {
      value ??= "true";
    } else if (value === undefined) {
      value = argv[++i];
      if (value === undefined) throw new UsageError(`Option "${name}" needs a value`);
    }
    out[spec.key] = convert(spec, value, name);
  }
  return out as unknown as PgodFlags;
}

function convert(f: FlagSpec, value: string, name = `--${f.long}`): string | number | boolean {
  switch (f.kind) {
    case "bool":
      if (value === "true" || value === "1") return true;
      if (value === "false" || value === "0") return false;
      throw new UsageError(`Invalid value "${value}" for "${name}": expected true or false`);
    case "duration": {
      let ms: number;
      try {
        ms = parseDuration(value);
      } catch (e) {
        throw new UsageError(`Invalid value "${value}" for "${name}": ${(e as Error).message.replace(/^Invalid duration "[^"]*": /, "")}`);
      }
      if (ms < 1000) throw new UsageError(`Invalid value "${value}" for "${name}": must be at least 1s`);
      return ms;
    }
    case "string":
      if (value === "" && f.key !== "metrics" && f.key !== "ssh" && f.key !== "webhook") throw new UsageError(`Invalid value "" for "${name}": must not be empty`);
      return value;
  }
}
