import { expect, test } from "bun:test";
import { Metrics } from "../src/metrics.ts";

const value = async (m: Metrics, name: string, labels: string): Promise<string | undefined> => {
  const text = await m.registry.metrics();
  return text.split("\n").find((l) => l.startsWith(`${name}{${labels}}`))?.split(" ")[1];
};

test("Metrics counts commands and their errors under the original's names", async () => {
  const m = new Metrics(false);
  m.observe({ service: "web", cmd: "git", subcmd: "fetch" }, true);
  m.observe({ service: "web", cmd: "git", subcmd: "fetch" }, false);
  expect(await value(m, "pgo_command_count", 'service="web",cmd="git",subcmd="fetch"')).toBe("2");
  expect(await value(m, "pgo_command_error_count", 'service="web",cmd="git",subcmd="fetch"')).toBe("1");
});

test("Metrics.deployed() sets up and the last deploy time, and a refusal leaves up as it was", async () => {
  const m = new Metrics(false);
  m.deployed("web", "deployed");
  expect(await value(m, "pgo_service_up", 'service="web"')).toBe("1");
  expect(Number(await value(m, "pgo_service_last_deploy_timestamp_seconds", 'service="web"'))).toBeGreaterThan(1.7e9);
  m.deployed("web", "refused");
  expect(await value(m, "pgo_service_up", 'service="web"')).toBe("1");
  m.deployed("web", "failed");
  expect(await value(m, "pgo_service_up", 'service="web"')).toBe("0");
  expect(await value(m, "pgo_deploys_total", 'service="web",result="refused"')).toBe("1");
});

test("Metrics without process metrics exports none until asked, then once", async () => {
  const m = new Metrics(false);
  expect(await m.registry.metrics()).not.toContain("process_cpu_seconds_total");
  m.collectProcessMetrics();
  m.collectProcessMetrics();
  const text = await m.registry.metrics();
  expect(text.match(/^# TYPE process_cpu_seconds_total /gm)?.length).toBe(1);
  expect(text).not.toContain("nodejs_active_handles_total");
});

test("Metrics.verified() and an unverified deploy result set the unverified-head gauge and leave up as it was", async () => {
  const m = new Metrics(false);
  m.deployed("web", "deployed");
  m.verified("web", false);
  m.deployed("web", "unverified");
  expect(await value(m, "pgo_service_head_unverified", 'service="web"')).toBe("1");
  expect(await value(m, "pgo_service_up", 'service="web"')).toBe("1");
  expect(await value(m, "pgo_deploys_total", 'service="web",result="unverified"')).toBe("1");
  m.verified("web", true);
  expect(await value(m, "pgo_service_head_unverified", 'service="web"')).toBe("0");
});
