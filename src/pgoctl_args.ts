/** pgoctl's command line: its usage text, its parser, and the request text pgod receives. */

import { UsageError, errorMessage } from "./errors.ts";
import { quoteShellWord } from "./shell_words.ts";
import { parseTarget, type Target } from "./target.ts";

/** Exit status for a bad command line (sysexits EX_USAGE, as pgod uses for a malformed request). */
export const EXIT_USAGE = 64;
/** Exit status for pgoctl's own failures (connection, login, host key), as OpenSSH's ssh uses. */
export const EXIT_SSH = 255;
/** Exit status when stdout is a closed pipe: what a process killed by SIGPIPE reports (128 + 13). */
export const EXIT_PIPE = 141;

/** Default SSH port of pgod. */
export const DEFAULT_PORT = 2222;
/** A parsed command line that runs something. */
export interface Invocation {
  identity?: string;
  port: number;
  knownHosts?: string;
  /** `--strict-host-keys`: an unknown host is refused, and known_hosts is never written. */
  strict?: boolean;
  /** `--host-key`: the key (or known_hosts lines) the server must offer; known_hosts is not used. */
  hostKey?: string;
  target: Target;
  args: string[];
}

export type ParsedArgs = { action: "help" } | { action: "version" } | ({ action: "run" } & Invocation);

export const SHORT_USAGE =
  "Usage: pgoctl [-i IDENTITY] [-p PORT] [--known-hosts FILE] [--strict-host-keys] [--host-key KEY]\n" +
  "              [--] machine:service//command [args...]";

/** The text of `pgoctl --help`. */
export const USAGE = `${SHORT_USAGE}
       pgoctl -v | -h

Runs command for service on the pgod at machine over SSH, streams its output and exits with
its exit status. Options go before the target; everything after the target goes to the remote
command unchanged, options included. machine is a name, an IPv4 address or [IPv6].

  -i, --identity FILE     private key, unencrypted OpenSSH or PEM (default: the key text in
                          the environment variable PGOCTL_ID)
  -p, --port PORT         pgod's SSH port (default ${DEFAULT_PORT})
      --known-hosts FILE  host keys, OpenSSH format (default ~/.ssh/known_hosts); an unknown
                          host is trusted on first use and recorded here (the file is made
                          when missing, its folder never)
      --strict-host-keys  refuse a host that is not in known_hosts instead of trusting it,
                          and never write known_hosts (also PGOCTL_STRICT_HOST_KEYS=1)
      --host-key KEY      the host key the server must offer, "ssh-ed25519 AAAA..." or a
                          known_hosts line; known_hosts is then not used (also PGOCTL_HOST_KEY)
  -v, --version           print the version
  -h, --help              print this help

Exit status: the remote command's; ${EXIT_SSH} when connecting, logging in or checking the host
key fails; ${EXIT_USAGE} for a bad command line.
`;

/** Parses pgoctl's command line (without argv[0]); throws UsageError. */
export function parseArgs(argv: readonly string[]): ParsedArgs {
  let identity: string | undefined;
  let port = DEFAULT_PORT;
  let knownHosts: string | undefined;
  let strict = false;
  let hostKey: string | undefined;
  let i = 0;
  const value = (name: string, inline: string | undefined): string => {
    if (inline !== undefined) return inline;
    const v = argv[++i];
    if (v === undefined) throw new UsageError(`Option "${name}" needs a value`);
    return v;
  };
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--") {
      i++;
      break;
    }
    if (!a.startsWith("-") || a === "-") break;
    const eq = a.startsWith("--") ? a.indexOf("=") : -1;
    const name = eq > 0 ? a.slice(0, eq) : a.startsWith("--") || a.length === 2 ? a : a.slice(0, 2);
    const inline = eq > 0 ? a.slice(eq + 1) : name !== a ? a.slice(2) : undefined;
    switch (name) {
      case "-h":
      case "--help":
        return { action: "help" };
      case "-v":
      case "--version":
        return { action: "version" };
      case "-i":
      case "--identity":
        identity = value(name, inline);
        break;
      case "-p":
      case "--port": {
        const v = value(name, inline);
        port = Number(v);
        if (!/^\d{1,5}$/.test(v) || port < 1 || port > 65535) throw new UsageError(`Invalid port "${v}": expected 1..65535`);
        break;
      }
      case "--known-hosts":
        knownHosts = value(name, inline);
        break;
      case "--strict-host-keys":
        if (inline !== undefined) throw new UsageError(`Option "${name}" takes no value`);
        strict = true;
        break;
      case "--host-key":
        hostKey = value(name, inline);
        break;
      default:
        throw new UsageError(`Unknown option "${a}"`);
    }
  }
  const t = argv[i];
  if (t === undefined) throw new UsageError("Missing target machine:service//command");
  let target: Target;
  try {
    target = parseTarget(t);
  } catch (e) {
    throw new UsageError(errorMessage(e));
  }
  const inv: { action: "run" } & Invocation = { action: "run", port, target, args: argv.slice(i + 1) };
  if (identity !== undefined) inv.identity = identity;
  if (knownHosts !== undefined) inv.knownHosts = knownHosts;
  if (strict) inv.strict = true;
  if (hostKey !== undefined) inv.hostKey = hostKey;
  return inv;
}

/** The request text pgod receives: each argument quoted so pgod's shell-word split gives back the exact argv. */
export function requestText(target: Target, args: readonly string[]): string {
  return [`${target.service}//${target.command}`, ...args.map(quoteShellWord)].join(" ");
}
