/** OpenSSH's `ssh` as a client of pgod's SSH server, for the tests (no bun:test here). */
import { run } from "./process.ts";
import type { Ran } from "./process.ts";

/**
 * The argv of `ssh` sending `request` as one string to 127.0.0.1:`port` with the key file
 * `keyFile`: no config file, no agent, no host key checks, no prompts. `extra` options go after the key.
 */
export function opensshArgv(port: number, keyFile: string, request: string, extra: string[] = []): string[] {
  return [
    "ssh", "-F", "/dev/null", "-p", String(port), "-i", keyFile, ...extra, "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
    "127.0.0.1", request,
  ];
}

/** Runs `ssh` (see `opensshArgv`) to completion; never throws for its exit status. */
export function openssh(port: number, keyFile: string, request: string, extra: string[] = []): Promise<Ran> {
  return run(opensshArgv(port, keyFile, request, extra), { check: false });
}
