import { afterEach, expect, test } from "bun:test";
import { appendFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ensureMounted, mountPoints, nfsSource, unmountStale } from "../src/mount.ts";
import { FakeDocker, tempDir } from "./helpers.ts";

const cleanups: (() => void)[] = [];
afterEach(() => cleanups.splice(0).forEach((f) => f()));
function setup() {
  const root = tempDir();
  cleanups.push(() => rmSync(root, { recursive: true, force: true }));
  const fake = new FakeDocker(root);
  const mountinfo = join(fake.bin, "mountinfo");
  writeFileSync(mountinfo, "22 1 8:1 / / rw - ext4 /dev/vda rw\n");
  const log = () => readFileSync(join(fake.bin, "mount.log"), "utf8").trim().split("\n");
  return { runner: fake.runner(), mountinfo, log, fake };
}

test("mountPoints() reads field 5 of mountinfo and undoes octal escapes", () => {
  expect([...mountPoints("36 35 98:0 /mnt1 /mnt/with\\040space rw - ext3 /dev/root rw\n22 1 8:1 / / rw - ext4 /dev/vda rw\n")])
    .toEqual(["/mnt/with space", "/"]);
});

test("nfsSource() puts the port in the options and brackets an IPv6 host", () => {
  expect(nfsSource({ host: "nfs.example.org", path: "/share" })).toEqual({ source: "nfs.example.org:/share", options: "rw,nosuid,nodev,hard" });
  expect(nfsSource({ host: "fd00::1", port: 2049, path: "/s" })).toEqual({ source: "[fd00::1]:/s", options: "rw,nosuid,nodev,hard,port=2049" });
});

test("ensureMounted() mounts once and not again while it is mounted", async () => {
  const { runner, mountinfo, log } = setup();
  const m = { host: "nfs.example.org", port: 2049, path: "/share" };
  expect(await ensureMounted("web", m, "/data/web", { runner, mountinfo })).toBe(true);
  expect(await ensureMounted("web", m, "/data/web", { runner, mountinfo })).toBe(false);
  expect(log()).toEqual(["mount -t nfs -o rw,nosuid,nodev,hard,port=2049 nfs.example.org:/share /data/web"]);
});

test("ensureMounted() fails clearly when mount fails", async () => {
  const { runner, mountinfo, fake } = setup();
  writeFileSync(join(fake.bin, "fail.mount"), "");
  await expect(ensureMounted("web", { host: "h", path: "/p" }, "/data/web", { runner, mountinfo })).rejects.toThrow("Connection refused");
});

test("unmountStale() unmounts only the shares pgod recorded mounting, for services no longer configured", async () => {
  const { runner, mountinfo, log, fake } = setup();
  const stateDir = join(fake.bin, "state-dir");
  await ensureMounted("a", { host: "h", path: "/a" }, "/data/a", { runner, mountinfo, stateDir });
  await ensureMounted("b", { host: "h", path: "/b" }, "/data/b", { runner, mountinfo, stateDir });
  expect(readFileSync(join(stateDir, "b", "mount"), "utf8")).toBe("/data/b\n");
  expect(await unmountStale("/data", new Set(["a"]), { runner, mountinfo, stateDir })).toEqual(["/data/b"]);
  expect(log().at(-1)).toBe("umount /data/b");
  expect([...mountPoints(readFileSync(mountinfo, "utf8"))]).toEqual(["/", "/data/a"]);
  expect(existsSync(join(stateDir, "b", "mount"))).toBe(false);
  expect(existsSync(join(stateDir, "a", "mount"))).toBe(true);
});

test("unmountStale() leaves an administrator's own mount under the data root alone", async () => {
  const { runner, mountinfo, fake } = setup();
  const stateDir = join(fake.bin, "state-dir");
  // The admin's /data/backup, and a share of a removed service that pgod did not record.
  appendFileSync(mountinfo, "40 1 0:40 / /data/backup rw - nfs nas:/backup rw\n41 1 0:41 / /data/old rw - nfs nas:/old rw\n");
  // A record that names another directory than the service's own is not followed either.
  mkdirSync(join(stateDir, "evil"), { recursive: true });
  writeFileSync(join(stateDir, "evil", "mount"), "/data/backup\n");
  expect(await unmountStale("/data", new Set(["a"]), { runner, mountinfo, stateDir })).toEqual([]);
  expect(existsSync(join(fake.bin, "mount.log"))).toBe(false);
  expect([...mountPoints(readFileSync(mountinfo, "utf8"))]).toEqual(["/", "/data/backup", "/data/old"]);
});
