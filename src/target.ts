/** The `machine:service//command` syntax of pgoctl and of the config's `reload` key. */

import { splitShellWords } from "./shell_words.ts";

/** A parsed `machine:service//command`; an IPv6 machine comes without its brackets. */
export interface Target {
  machine: string;
  service: string;
  command: string;
}

const TARGET_FORM = `expected "machine:service//command"`;
const MACHINE = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;
const IPV6 = /^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(%[A-Za-z0-9_.-]+)?$/;

/** Parses `machine:service//command`, where machine is a name, an IPv4 address or `[ipv6]`. */
export function parseTarget(s: string): Target {
  const bad = (why: string): Error => new Error(`Invalid target ${JSON.stringify(s)}: ${why}`);
  let machine: string;
  let rest: string;
  if (s.startsWith("[")) {
    const end = s.indexOf("]");
    if (end < 0) throw bad(`missing "]" after the IPv6 address`);
    machine = s.slice(1, end);
    if (!IPV6.test(machine)) throw bad(`invalid IPv6 address ${JSON.stringify(machine)}`);
    if (s[end + 1] !== ":") throw bad(TARGET_FORM);
    rest = s.slice(end + 2);
  } else {
    const colon = s.indexOf(":");
    if (colon < 0) throw bad(TARGET_FORM);
    machine = s.slice(0, colon);
    if (machine === "") throw bad("missing machine");
    if (!MACHINE.test(machine)) throw bad(`invalid machine ${JSON.stringify(machine)}`);
    rest = s.slice(colon + 1);
  }
  const parts = rest.split("//");
  if (parts.length !== 2) throw bad(TARGET_FORM);
  const [service, command] = parts as [string, string];
  if (service === "") throw bad("missing service");
  if (service.includes(":")) throw bad(`invalid service ${JSON.stringify(service)}; an IPv6 machine must be in brackets, as in "[::1]:service//command"`);
  if (/[\s/]/.test(service)) throw bad(`invalid service ${JSON.stringify(service)}`);
  if (command === "") throw bad("missing command");
  if (/[\s/]/.test(command)) throw bad(`invalid command ${JSON.stringify(command)}: arguments go after the target`);
  return { machine, service, command };
}

/** A request as the SSH server receives it: `<service>//<command> [args...]`. */
export interface ParsedRequest {
  service: string;
  command: string;
  args: string[];
}

/** Parses a request text (shell-split, no expansion); throws on a malformed first word. */
export function parseRequest(s: string): ParsedRequest {
  const words = splitShellWords(s);
  const first = words[0];
  if (first === undefined) throw new Error(`Empty request: expected "service//command [args...]"`);
  const parts = first.split("//");
  if (parts.length !== 2 || parts[0] === "" || parts[1] === "") {
    throw new Error(`Invalid request ${JSON.stringify(first)}: expected "service//command [args...]"`);
  }
  return { service: parts[0]!, command: parts[1]!, args: words.slice(1) };
}
