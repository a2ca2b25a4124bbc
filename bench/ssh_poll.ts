/**
 * The cost of one idle poll of an ssh remote, in-process (src/ssh_refs.ts) on a kept connection
 * (what pgod does) and on a new connection per poll, against `git ls-remote` over OpenSSH's client (what pgod ran before), both against the same real sshd
 * on loopback serving a real bare repository. Prints CPU per poll of the polling side (this
 * process for in-process, the waited-for children for git), the wall time per poll, and the
 * cost of a cycle of 50 services as a share of the baseline of bench/README.md section 1.
 *
 *   bun bench/ssh_poll.ts [POLLS] [BASELINE_SECONDS_PER_CYCLE_OF_50]
 *
 * A user of its own logs in (removed at the end). sshd's own work is the server's, as a forge's would be, and is counted for neither side.
 */
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SshConnections } from "../src/ssh_connections.ts";
import { sshAdvertisedHead } from "../src/ssh_refs.ts";

const polls = Number(process.argv[2] ?? 50);
const baseline = Number(process.argv[3] ?? 22.91); // section 1's baseline, s per cycle of 50 services

function sh(argv: string[], env?: Record<string, string>): { out: string; cpuMs: number; ms: number } {
  const t = performance.now();
  const p = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe", ...(env ? { env } : {}) });
  if (p.exitCode !== 0) throw new Error(`${argv.join(" ")}: ${p.stderr.toString()}`);
  const u = p.resourceUsage!;
  return { out: p.stdout.toString(), cpuMs: Number(u.cpuTime.user + u.cpuTime.system) / 1000, ms: performance.now() - t };
}

const dir = await mkdtemp(join(tmpdir(), "pgobench-sshpoll-"));
// sshd runs the command through the login user's shell: a user of its own with /bin/sh, so that
// no shell start-up files (root's may be slow) weigh on the wall time. Its password is "*" (no
// password, but not locked: sshd refuses locked accounts without PAM).
const user = `pgobench-sp${Math.random().toString(36).slice(2, 8)}`;
let sshd: ReturnType<typeof Bun.spawn> | undefined;
let userMade = false;
try {
  sh(["useradd", "--system", "--password", "*", "--no-create-home", "--home-dir", join(dir, "login"), "--shell", "/bin/sh", user]);
  userMade = true;
  await chmod(dir, 0o755);
  await mkdir("/run/sshd", { recursive: true, mode: 0o755 });
  sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", join(dir, "host")]);
  sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", join(dir, "client")]);
  await writeFile(join(dir, "authorized_keys"), await Bun.file(join(dir, "client.pub")).text());
  const work = join(dir, "work");
  sh(["git", "init", "-q", "-b", "main", work]);
  sh(["git", "-C", work, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "--allow-empty", "-m", "x"]);
  const repo = join(dir, "repo.git");
  sh(["git", "clone", "-q", "--bare", work, repo]);
  sh(["chown", "-R", `${user}:`, repo]); // git serves only repositories of the user it runs as
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  await writeFile(join(dir, "sshd.conf"), [
    `Port ${port}`, "ListenAddress 127.0.0.1", `HostKey ${join(dir, "host")}`, `PidFile ${join(dir, "pid")}`,
    `AuthorizedKeysFile ${join(dir, "authorized_keys")}`, "PasswordAuthentication no", "KbdInteractiveAuthentication no",
    "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password", "AcceptEnv GIT_PROTOCOL", "LogLevel ERROR", "",
  ].join("\n"));
  sshd = Bun.spawn(["/usr/sbin/sshd", "-D", "-e", "-f", join(dir, "sshd.conf")], { stdout: "ignore", stderr: "inherit" });
  const home = join(dir, "home");
  await mkdir(join(home, ".ssh"), { recursive: true, mode: 0o700 });
  await Bun.write(join(home, ".ssh", "id_ed25519"), Bun.file(join(dir, "client")));
  await chmod(join(home, ".ssh", "id_ed25519"), 0o600);
  const kh = join(home, ".ssh", "known_hosts");
  await writeFile(kh, `[127.0.0.1]:${port} ${(await Bun.file(join(dir, "host.pub")).text()).trim()}\n`);
  const url = `ssh://${user}@127.0.0.1:${port}${repo}`;
  const account = { name: "root", uid: 0, home };
  const fresh = new SshConnections({ maxPerUser: 0 }); // keeps nothing: a connection per poll
  const kept = new SshConnections();
  for (let i = 0; i < 100; i++) {
    try {
      await sshAdvertisedHead(url, "main", account, { timeoutMs: 30_000, connections: kept });
      break;
    } catch {
      await Bun.sleep(50); // sshd still starting: poll again
    }
  }

  // In-process: this process's CPU over the polls, on the kept connection, then a new one each.
  const inProcess = async (connections: SshConnections): Promise<{ cpu: number; wall: number }> => {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    for (let i = 0; i < polls; i++) await sshAdvertisedHead(url, "main", account, { timeoutMs: 30_000, connections });
    const c = process.cpuUsage(c0);
    return { cpu: (c.user + c.system) / 1000 / polls, wall: (performance.now() - t0) / polls };
  };
  const reused = await inProcess(kept);
  if (kept.counts.made !== 1) throw new Error(`the kept connection was made ${kept.counts.made} times`);
  kept.close();
  const { cpu: inCpu, wall: inWall } = await inProcess(fresh);

  // git ls-remote over OpenSSH, as pgod's git.ts runs it (BatchMode), with the same key and known_hosts.
  const env = {
    PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: home, GIT_CONFIG_NOSYSTEM: "1", GIT_TERMINAL_PROMPT: "0",
    GIT_SSH_COMMAND: `ssh -F /dev/null -i ${join(home, ".ssh", "id_ed25519")} -o UserKnownHostsFile=${kh} -o BatchMode=yes -o ConnectTimeout=30`,
  };
  let gitCpu = 0;
  let gitWall = 0;
  const n = Math.max(1, Math.floor(polls / 2));
  for (let i = 0; i < n; i++) {
    const r = sh(["git", "ls-remote", "--heads", url, "refs/heads/main"], env);
    gitCpu += r.cpuMs;
    gitWall += r.ms;
  }
  gitCpu /= n;
  gitWall /= n;
  const share = (ms: number): string => `${(((ms * 50) / 1000 / baseline) * 100).toFixed(2)} %`;
  const load = (await Bun.file("/proc/loadavg").text()).split(" ")[0];
  process.stdout.write(
    `load average (1 min) at the end: ${load}\n` +
    `in-process, kept connection: ${reused.cpu.toFixed(1)} ms CPU, ${reused.wall.toFixed(1)} ms wall per poll (n=${polls}); 50 services: ${share(reused.cpu)} of the ${baseline} s baseline\n` +
    `in-process, new connection:  ${inCpu.toFixed(1)} ms CPU, ${inWall.toFixed(1)} ms wall per poll (n=${polls}); 50 services: ${share(inCpu)} of the ${baseline} s baseline\n` +
    `git ls-remote (ssh):          ${gitCpu.toFixed(1)} ms CPU, ${gitWall.toFixed(1)} ms wall per poll (n=${n}); 50 services: ${share(gitCpu)} of the baseline\n`,
  );
} finally {
  sshd?.kill();
  await sshd?.exited;
  if (userMade) sh(["userdel", user]);
  await rm(dir, { recursive: true, force: true });
}
