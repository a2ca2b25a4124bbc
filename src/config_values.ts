/** The values of the pgod config file that have a syntax of their own: each parser returns the value or why it is invalid. */
import { errorMessage } from "./errors.ts";
import type { Mount, Registry, Reload } from "./config.ts";
import { splitShellWords } from "./shell_words.ts";
import { parseTarget } from "./target.ts";

const HOST = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;
const IPV6 = /^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(%[A-Za-z0-9_.-]+)?$/;
const CONTAINER = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
/** Control characters, refused in values that reach a command line or a file. */
export const CONTROL = /[\x00-\x1f\x7f]/;

/** Why `b` is not a valid git branch name (git check-ref-format), or undefined. */
export function branchProblem(b: string): string | undefined {
  if (b === "") return "expected a git branch name";
  if (b.startsWith("-")) return `a git branch name cannot start with "-"`;
  if (/[\s~^:?*[\\]/.test(b) || CONTROL.test(b)) return `a git branch name cannot contain whitespace or any of "~^:?*[\\"`;
  if (b.includes("..")) return `a git branch name cannot contain ".."`;
  if (b.includes("@{") || b === "@") return `a git branch name cannot contain "@{" or be "@"`;
  const parts = b.split("/");
  if (parts.some((c) => c === "" || c.startsWith(".") || c.endsWith(".lock")) || b.endsWith(".")) {
    return `a git branch name cannot have empty components, components starting with "." or ending in ".lock", or end with "."`;
  }
  return undefined;
}

/** Why `p` is not a relative path inside the repository, or undefined. */
export function relativePathProblem(p: string): string | undefined {
  if (p === "") return "expected a path relative to the repository";
  if (p.includes("\0")) return "the path cannot contain a NUL character";
  if (p.startsWith("/")) return "expected a path relative to the repository, not an absolute path";
  const segments: string[] = [];
  for (const s of p.split("/")) {
    if (s === "" || s === ".") continue;
    if (s !== "..") segments.push(s);
    else if (segments.pop() === undefined) return "the path leaves the repository";
  }
  if (segments.length === 0) return "the path names the repository itself";
  if (segments[0] === ".git") return `the path cannot be inside ".git"`;
  return undefined;
}

/** Parses `machine:container//exec command args...`, or returns why it is invalid. */
export function parseReload(s: string): Reload | string {
  const form = `expected "machine:container//exec command [args...]"`;
  const slashes = s.indexOf("//");
  if (slashes < 0) return form;
  const ws = s.slice(slashes).search(/\s/);
  const end = ws < 0 ? s.length : slashes + ws;
  let container: string;
  try {
    const t = parseTarget(s.slice(0, end));
    if (t.command !== "exec") return `the command must be "exec", got ${q(t.command)}`;
    container = t.service;
  } catch {
    return form;
  }
  if (!CONTAINER.test(container)) return `invalid container name ${q(container)}`;
  let argv: string[];
  try {
    // Blank out the target so that columns in errors count from the start of the value.
    argv = splitShellWords(" ".repeat(end) + s.slice(end));
  } catch (e) {
    return lowerFirst(errorMessage(e));
  }
  if (argv.length === 0) return `missing the command to run after "exec"`;
  return { container, argv };
}

/** Parses `nfs://host[:port]/path`, or returns why it is invalid. */
export function parseMount(s: string): Mount | string {
  const form = `expected "nfs://host[:port]/path"`;
  if (!s.startsWith("nfs://")) return form;
  const rest = s.slice("nfs://".length);
  const slash = rest.indexOf("/");
  if (slash < 0) return `${form}: missing path`;
  const hp = hostPort(rest.slice(0, slash));
  if (typeof hp === "string") return `${form}: ${hp}`;
  const path = rest.slice(slash);
  if (CONTROL.test(path)) return `${form}: the path cannot contain control characters`;
  return hp.port === undefined ? { host: hp.host, path } : { host: hp.host, port: hp.port, path };
}

/** Parses `[user:]token@registry` (split at the last "@": a registry has none), or returns why it is invalid. */
export function parseRegistry(e: string, defaultUser: string): Registry | string {
  const at = e.lastIndexOf("@");
  if (at < 0) return `expected "[user:]token@registry"`;
  const host = e.slice(at + 1);
  if (host === "") return `missing registry after "@"`;
  if (host.startsWith("-") || /\s/.test(host) || CONTROL.test(host)) return `invalid registry ${q(host)}`;
  const cred = e.slice(0, at);
  const colon = cred.indexOf(":");
  const user = colon < 0 ? defaultUser : cred.slice(0, colon);
  const token = cred.slice(colon + 1);
  if (colon >= 0 && user === "") return `missing user before ":"`;
  if (token === "") return "missing token";
  return { user, token, host };
}

/** Splits `host[:port]` (an IPv6 address in brackets), or returns why it is invalid. */
export function hostPort(s: string): { host: string; port: number | undefined } | string {
  let host: string;
  let port: string | undefined;
  const m = /^\[([^\]]*)\](?::(.*))?$/.exec(s);
  if (m) {
    host = m[1] ?? "";
    port = m[2];
    if (!IPV6.test(host)) return `invalid IPv6 address ${q(host)}`;
  } else {
    const parts = s.split(":");
    if (parts.length > 2) return "an IPv6 address must be in brackets";
    host = parts[0] ?? "";
    port = parts[1];
    if (host === "") return "missing host";
    if (!HOST.test(host)) return `invalid host ${q(host)}`;
  }
  if (port === undefined) return { host, port: undefined };
  if (!/^\d{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535) return `port ${q(port)} is not in 1-65535`;
  return { host, port: Number(port) };
}

/** A value quoted for a message. */
export function q(s: string): string {
  return JSON.stringify(s);
}

function lowerFirst(s: string): string {
  return s.charAt(0).toLowerCase() + s.slice(1);
}
