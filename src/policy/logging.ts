/** Rules on logging: logs stay on this host unless the admin allows a driver that sends them elsewhere. */
import type { Rule, Walk } from "./context.ts";
import { isRecord } from "../json.ts";
import { nonEmpty } from "./context.ts";

/** Drivers that keep logs in the engine's own files (or nowhere). */
export const DEFAULT_LOGGING_DRIVERS: readonly string[] = ["json-file", "local", "none"];

export const LOGGING_RULES: readonly Rule[] = [
  { rule: "logging_driver", key: "logging.driver", reason: "other logging drivers (syslog, gelf, fluentd, splunk, journald, ...) send to addresses the repository chooses, the host's included; the admin may allow more with logging_drivers" },
];

export function checkLogging(w: Walk): void {
  const allowed = new Set([...DEFAULT_LOGGING_DRIVERS, ...(w.ctx.loggingDrivers ?? [])]);
  for (const { name: svc, def } of w.services) {
    const logging = isRecord(def["logging"]) ? def["logging"] : {};
    const driver = logging["driver"];
    // No driver: the engine's default, which the admin chose.
    if (nonEmpty(driver) && !(typeof driver === "string" && allowed.has(driver))) w.add(svc, "logging.driver", "logging_driver", driver);
  }
}
