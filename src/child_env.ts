/** What every child process of pgod sees: its PATH, the engine it talks to, the minimal environment of a service's children. */
import type { Account } from "./users.ts";

const SYS_PATH = "/usr/sbin:/usr/bin:/sbin:/bin";

/** The PATH children get: pgod's own (systemd sets a sane one), else the system default. */
export const CHILD_PATH: string = process.env["PATH"] || `/usr/local/sbin:/usr/local/bin:${SYS_PATH}`;

/**
 * Which engine docker and docker compose children talk to: the one pgod itself reads
 * (`DOCKER_HOST` in pgod's environment, else the default socket), never one a service's env names.
 */
export function engineEnv(env: Record<string, string | undefined> = process.env): Record<string, string> {
  return env["DOCKER_HOST"] ? { DOCKER_HOST: env["DOCKER_HOST"] } : {};
}

/** The minimal environment every child of a service gets. */
export function baseEnv(a: Account): Record<string, string> {
  return { HOME: a.home, PATH: CHILD_PATH, USER: a.name, LOGNAME: a.name, LC_ALL: "C.UTF-8" };
}
