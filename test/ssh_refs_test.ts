/**
 * The in-process poll of ssh remotes against a real OpenSSH server (`/usr/sbin/sshd -D -f CONFIG`
 * on a loopback port, its own host key and authorized_keys; not the system's sshd) serving a real
 * bare repository. Every login runs a `command=` wrapper that leaves a marker, so a test can tell
 * whether git-upload-pack ran at all.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmod, chown, mkdir, mkdtemp, readdir, rm, symlink, writeFile } from "node:fs/promises";
import { connect, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { UnsupportedRemote } from "../src/refs.ts";
import { SshConnections, sshConnections } from "../src/ssh_connections.ts";
import { isSshRemote, parseSshRemote, quotePath, sshAdvertisedHead, type SshAccount } from "../src/ssh_refs.ts";
import { canConnect, freePort, runSync as sh } from "./kit/process.ts";

let dir: string;
let repo: string; // bare repository
let head: string; // the commit main points at
let hostPub: string;
let v2: Sshd; // AcceptEnv GIT_PROTOCOL
let v0: Sshd; // ignores GIT_PROTOCOL: the server speaks protocol v0
let impostor: Sshd; // another host key
let account: SshAccount;

interface Sshd {
  port: number;
  proc: ReturnType<typeof Bun.spawn>;
}

async function startSshd(name: string, extra: string, hostKey = "host_ed25519"): Promise<Sshd> {
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const config = join(dir, `${name}.conf`);
    await writeFile(config, [
      `Port ${port}`, "ListenAddress 127.0.0.1", `HostKey ${join(dir, hostKey)}`, `PidFile ${join(dir, `${name}.pid`)}`,
      `AuthorizedKeysFile ${join(dir, "authorized_keys")}`, "PasswordAuthentication no", "KbdInteractiveAuthentication no",
      "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password", "LogLevel ERROR", extra, "",
    ].join("\n"));
    const proc = Bun.spawn(["/usr/sbin/sshd", "-D", "-e", "-f", config], { stdout: "ignore", stderr: "pipe" });
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline && proc.exitCode === null) {
      if (await canConnect(port)) return { port, proc };
      await Bun.sleep(20); // polling for the port, not waiting out a fixed time
    }
    proc.kill();
    if (attempt >= 3) throw new Error(`sshd did not start: ${await new Response(proc.stderr).text()}`);
  }
}

/** A home with ~/.ssh holding the client key (0600) and `known_hosts`. */
async function makeHome(name: string, knownHosts: string): Promise<SshAccount> {
  const home = join(dir, name);
  await mkdir(join(home, ".ssh"), { recursive: true, mode: 0o700 });
  await Bun.write(join(home, ".ssh", "id_ed25519"), await Bun.file(join(dir, "client")).text());
  await chmod(join(home, ".ssh", "id_ed25519"), 0o600);
  await writeFile(join(home, ".ssh", "known_hosts"), knownHosts);
  return { name: "root", uid: 0, home };
}

function known(port: number, key = hostPub): string {
  return `[127.0.0.1]:${port} ${key}\n`;
}

async function marks(): Promise<number> {
  return (await readdir(join(dir, "marks"))).length;
}

beforeAll(async () => {
  if (!(await Bun.file("/usr/sbin/sshd").exists())) throw new Error("sshd is missing: bash scripts/deps.sh installs openssh-server");
  dir = await mkdtemp(join(tmpdir(), "pgo-sshrefs-"));
  await chmod(dir, 0o755);
  await mkdir("/run/sshd", { recursive: true, mode: 0o755 }); // sshd's privilege separation directory
  await mkdir(join(dir, "marks"));
  sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", join(dir, "host_ed25519")]);
  sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", join(dir, "client")]);
  sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", join(dir, "other")]);
  hostPub = (await Bun.file(join(dir, "host_ed25519.pub")).text()).trim().split(" ").slice(0, 2).join(" ");
  const clientPub = (await Bun.file(join(dir, "client.pub")).text()).trim();
  // Each login leaves a marker, then runs what the client asked for.
  const wrapper = `mktemp -p ${join(dir, "marks")} >/dev/null; exec sh -c "$SSH_ORIGINAL_COMMAND"`;
  await writeFile(join(dir, "authorized_keys"), `command="${wrapper.replace(/"/g, '\\"')}" ${clientPub}\n`);
  const work = join(dir, "work");
  await mkdir(work);
  sh(["git", "init", "-q", "-b", "main", work]);
  await writeFile(join(work, "compose.yaml"), "services: {}\n");
  sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "one"], { cwd: work });
  sh(["git", "-C", work, "branch", "other"]);
  sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "two"], { cwd: work });
  head = sh(["git", "-C", work, "rev-parse", "HEAD"]).trim();
  repo = join(dir, "repo's.git");
  sh(["git", "clone", "-q", "--bare", work, repo]);
  sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", join(dir, "impostor_ed25519")]);
  [v2, v0, impostor] = await Promise.all([
    startSshd("v2", "AcceptEnv GIT_PROTOCOL"), startSshd("v0", ""), startSshd("impostor", "AcceptEnv GIT_PROTOCOL", "impostor_ed25519"),
  ]);
  account = await makeHome("home", known(v2.port) + known(v0.port));
});

afterAll(async () => {
  sshConnections.close();
  for (const d of [v2, v0, impostor]) d?.proc.kill();
  await Promise.all([v2, v0, impostor].map((d) => d?.proc.exited));
  await rm(dir, { recursive: true, force: true });
});

const opts = { timeoutMs: 20_000 };

describe("parseSshRemote()", () => {
  test("reads ssh:// URLs and scp-style remotes as git does, and nothing else", () => {
    expect(parseSshRemote("ssh://git@forge.example:2200/team/app.git")).toEqual({ user: "git", host: "forge.example", port: 2200, path: "/team/app.git" });
    expect(parseSshRemote("ssh://forge.example/~alice/app.git")).toEqual({ host: "forge.example", port: 22, path: "~alice/app.git" });
    expect(parseSshRemote("ssh://[::1]:22/x")).toEqual({ host: "::1", port: 22, path: "/x" });
    expect(parseSshRemote("git@forge.example:team/app.git")).toEqual({ user: "git", host: "forge.example", port: 22, path: "team/app.git" });
    expect(parseSshRemote("forge.example:/srv/app.git")).toEqual({ host: "forge.example", port: 22, path: "/srv/app.git" });
    for (const no of ["https://forge.example/app.git", "file:///srv/app.git", "/srv/app.git", "./dir:x", "git://forge/app", "-oProxyCommand=x:y", "ssh://-oProxyCommand=x/y"]) {
      expect({ no, remote: isSshRemote(no) }).toEqual({ no, remote: false });
    }
    expect(quotePath("repo's.git")).toBe(`'repo'\\''s.git'`);
  });
});

describe("sshAdvertisedHead() against a real sshd", () => {
  test("asks over protocol v2 (ls-refs) with the user's key and known_hosts, for ssh:// and scp-style remotes", async () => {
    expect(await sshAdvertisedHead(`ssh://root@127.0.0.1:${v2.port}${repo}`, "main", account, opts)).toBe(head);
    const other = sh(["git", "-C", repo, "rev-parse", "other"]).trim();
    expect(await sshAdvertisedHead(`ssh://127.0.0.1:${v2.port}${repo}`, "other", account, opts)).toBe(other);
  });

  test("reads the v0 advertisement from a server that ignores GIT_PROTOCOL", async () => {
    expect(await sshAdvertisedHead(`ssh://root@127.0.0.1:${v0.port}${repo}`, "main", account, opts)).toBe(head);
  });

  test("a branch the remote does not have is an error, not a fallback", async () => {
    await expect(sshAdvertisedHead(`ssh://127.0.0.1:${v2.port}${repo}`, "nope", account, opts)).rejects.toThrow('Cannot find branch "nope" on the remote');
  });

  test("an unknown host is never trusted: no connection is made and git is left to answer", async () => {
    const stranger = await makeHome("stranger", "");
    const before = await marks();
    await expect(sshAdvertisedHead(`ssh://127.0.0.1:${v2.port}${repo}`, "main", stranger, opts)).rejects.toBeInstanceOf(UnsupportedRemote);
    expect(await marks()).toBe(before);
  });

  test("a changed host key is refused before logging in: nothing runs on the server", async () => {
    const otherKey = (await Bun.file(join(dir, "other.pub")).text()).trim().split(" ").slice(0, 2).join(" ");
    const fooled = await makeHome("fooled", known(v2.port, otherKey));
    const before = await marks();
    const e = await sshAdvertisedHead(`ssh://127.0.0.1:${v2.port}${repo}`, "main", fooled, opts).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(UnsupportedRemote);
    expect((e as Error).message).toContain("is changed");
    expect(await marks()).toBe(before);
  });

  test("a key that is not the user's own, readable by others, or a symlink is never read", async () => {
    const url = `ssh://127.0.0.1:${v2.port}${repo}`;
    const before = await marks();
    const theirs = await makeHome("theirs", known(v2.port));
    await chown(join(theirs.home, ".ssh", "id_ed25519"), 65534, 65534);
    const open = await makeHome("open", known(v2.port));
    await chmod(join(open.home, ".ssh", "id_ed25519"), 0o644);
    const linked = await makeHome("linked", known(v2.port));
    await rm(join(linked.home, ".ssh", "id_ed25519"));
    await symlink(join(account.home, ".ssh", "id_ed25519"), join(linked.home, ".ssh", "id_ed25519"));
    for (const a of [theirs, open, linked]) {
      const e = await sshAdvertisedHead(url, "main", a, opts).catch((x: unknown) => x);
      expect({ home: a.home, error: (e as Error).message }).toEqual({ home: a.home, error: `no usable key in "${a.home}/.ssh"` });
    }
    expect(await marks()).toBe(before);
    // The same key, as the user's own, works.
    expect(await sshAdvertisedHead(url, "main", account, opts)).toBe(head);
  });

  test("a ~/.ssh/config (whoever owns it) or a core.sshCommand leaves the remote to git", async () => {
    const configured = await makeHome("configured", known(v2.port));
    await writeFile(join(configured.home, ".ssh", "config"), "Host *\n  IdentityFile ~/.ssh/deploy\n");
    await chown(join(configured.home, ".ssh", "config"), 65534, 65534); // whoever owns it
    await expect(sshAdvertisedHead(`ssh://127.0.0.1:${v2.port}${repo}`, "main", configured, opts)).rejects.toThrow(/config" exists/);
    const gitconf = await makeHome("gitconf", known(v2.port));
    await writeFile(join(gitconf.home, ".gitconfig"), "[core]\n\tsshCommand = ssh -i ~/.ssh/deploy\n");
    await expect(sshAdvertisedHead(`ssh://127.0.0.1:${v2.port}${repo}`, "main", gitconf, opts)).rejects.toThrow(/core.sshCommand/);
  });

  test("a path that is not a repository gives UnsupportedRemote with git's complaint", async () => {
    const e = await sshAdvertisedHead(`ssh://127.0.0.1:${v2.port}${dir}/nothing.git`, "main", account, opts).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(UnsupportedRemote);
    expect((e as Error).message).toMatch(/not .*a git repository|does not appear/);
  });
});

/**
 * A TCP proxy in front of an sshd that counts the connections made through it and can cut them,
 * freeze them (forward nothing more, as a peer gone without a word) or send new ones elsewhere.
 */
class Proxy {
  accepted = 0;
  readonly open = new Set<{ client: Socket; server: Socket; frozen: boolean }>();
  private constructor(readonly server: Server, readonly port: number, public target: number) {}

  static async start(target: number): Promise<Proxy> {
    const server = createServer();
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const p = new Proxy(server, (server.address() as { port: number }).port, target);
    server.on("connection", (client) => {
      p.accepted++;
      const pair = { client, server: connect(p.target, "127.0.0.1"), frozen: false };
      p.open.add(pair);
      client.on("data", (d) => pair.frozen || pair.server.write(d));
      pair.server.on("data", (d) => pair.frozen || client.write(d));
      const end = (): void => {
        p.open.delete(pair);
        client.destroy();
        pair.server.destroy();
      };
      for (const s of [client, pair.server]) s.on("close", end).on("error", end);
    });
    return p;
  }

  cut(): void {
    for (const pair of this.open) pair.client.destroy();
  }

  freeze(): void {
    for (const pair of this.open) pair.frozen = true;
  }

  async stop(): Promise<void> {
    this.cut();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

async function until(what: string, ok: () => boolean, timeoutMs = 20_000): Promise<void> {
  for (const end = Date.now() + timeoutMs; !ok();) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(20); // polling for a condition, not waiting out a fixed time
  }
}

describe("sshAdvertisedHead() keeps its connection between polls", () => {
  let proxy: Proxy;
  let url: string;
  let viaProxy: SshAccount; // knows the proxy's port as v2's host
  const pools: SshConnections[] = [];
  const pool = (o: ConstructorParameters<typeof SshConnections>[0] = {}): SshConnections => {
    const p = new SshConnections(o);
    pools.push(p);
    return p;
  };

  beforeAll(async () => {
    proxy = await Proxy.start(v2.port);
    url = `ssh://root@127.0.0.1:${proxy.port}${repo}`;
    viaProxy = await makeHome("viaproxy", known(proxy.port) + known(v2.port));
  });

  afterAll(async () => {
    for (const p of pools) p.close();
    await proxy?.stop();
  });

  test("two polls of one login use one connection: one login on the server, two runs of git-upload-pack", async () => {
    const connections = pool();
    const before = { accepted: proxy.accepted, marks: await marks() };
    expect(await sshAdvertisedHead(url, "main", viaProxy, { ...opts, connections })).toBe(head);
    expect(await sshAdvertisedHead(url, "main", viaProxy, { ...opts, connections })).toBe(head);
    await expect(sshAdvertisedHead(url, "nope", viaProxy, { ...opts, connections })).rejects.toThrow('Cannot find branch "nope"');
    expect(await sshAdvertisedHead(url, "main", viaProxy, { ...opts, connections })).toBe(head);
    expect({ accepted: proxy.accepted - before.accepted, runs: (await marks()) - before.marks, open: connections.size })
      .toEqual({ accepted: 1, runs: 4, open: 1 });
    connections.close();
    await until("the proxy to see the connection closed", () => proxy.open.size === 0);
  });

  test("a connection that was closed under it is made again on the next poll", async () => {
    const connections = pool();
    const before = proxy.accepted;
    expect(await sshAdvertisedHead(url, "main", viaProxy, { ...opts, connections })).toBe(head);
    proxy.cut();
    expect(await sshAdvertisedHead(url, "main", viaProxy, { ...opts, connections })).toBe(head);
    expect(await sshAdvertisedHead(url, "main", viaProxy, { ...opts, connections })).toBe(head);
    expect({ accepted: proxy.accepted - before, open: connections.size }).toEqual({ accepted: 2, open: 1 });
    connections.close();
  });

  test("a connection that stops answering is given up and made again within the poll's deadline", async () => {
    const connections = pool();
    const before = proxy.accepted;
    expect(await sshAdvertisedHead(url, "main", viaProxy, { ...opts, connections })).toBe(head);
    proxy.freeze();
    const t = performance.now();
    expect(await sshAdvertisedHead(url, "main", viaProxy, { timeoutMs: 20_000, connections })).toBe(head);
    expect(performance.now() - t).toBeLessThan(20_000);
    expect({ accepted: proxy.accepted - before, lost: connections.counts.lost }).toEqual({ accepted: 2, lost: 1 });
    connections.close();
    proxy.cut();
  });

  test("a poll never waits past its deadline when the server stops answering", async () => {
    const connections = pool();
    expect(await sshAdvertisedHead(url, "main", viaProxy, { ...opts, connections })).toBe(head);
    proxy.freeze();
    const frozen = proxy.accepted;
    proxy.target = 9; // the discard port: nothing listens, new connections fail at once
    const t = performance.now();
    const e = await sshAdvertisedHead(url, "main", viaProxy, { timeoutMs: 3000, connections }).catch((x: unknown) => x);
    proxy.target = v2.port;
    expect(performance.now() - t).toBeLessThan(6000);
    expect(e).toBeInstanceOf(Error); // RemoteTimeout or UnsupportedRemote: either way no hang
    expect(proxy.accepted).toBeGreaterThanOrEqual(frozen);
    connections.close();
    proxy.cut();
  });

  test("a changed host key when the connection is made again is refused: nothing runs on the server", async () => {
    const connections = pool();
    expect(await sshAdvertisedHead(url, "main", viaProxy, { ...opts, connections })).toBe(head);
    proxy.target = impostor.port; // the same address now answers with another host key
    proxy.cut();
    const before = await marks();
    const e = await sshAdvertisedHead(url, "main", viaProxy, { ...opts, connections }).catch((x: unknown) => x);
    proxy.target = v2.port;
    expect(e).toBeInstanceOf(UnsupportedRemote);
    expect((e as Error).message).toContain("is changed");
    expect({ runs: (await marks()) - before, open: connections.size }).toEqual({ runs: 0, open: 0 });
    connections.close();
  });

  test("a known_hosts that changed makes a new connection, its host key checked again", async () => {
    const connections = pool();
    const home = await makeHome("rekeyed", known(proxy.port));
    const before = proxy.accepted;
    expect(await sshAdvertisedHead(url, "main", home, { ...opts, connections })).toBe(head);
    const otherKey = (await Bun.file(join(dir, "other.pub")).text()).trim().split(" ").slice(0, 2).join(" ");
    await writeFile(join(home.home, ".ssh", "known_hosts"), known(proxy.port, otherKey));
    await expect(sshAdvertisedHead(url, "main", home, { ...opts, connections })).rejects.toThrow("is changed");
    expect({ accepted: proxy.accepted - before, open: connections.size }).toEqual({ accepted: 2, open: 0 });
  });

  test("two service users never share a connection, even with the same key and remote user", async () => {
    const connections = pool();
    const nobody = await makeHome("nobody", known(proxy.port));
    await chown(join(nobody.home, ".ssh", "id_ed25519"), 65534, 65534);
    const other: SshAccount = { name: "nobody", uid: 65534, home: nobody.home };
    const before = proxy.accepted;
    for (let i = 0; i < 2; i++) {
      expect(await sshAdvertisedHead(url, "main", viaProxy, { ...opts, connections })).toBe(head);
      expect(await sshAdvertisedHead(url, "main", other, { ...opts, connections })).toBe(head);
    }
    expect({ accepted: proxy.accepted - before, open: connections.size }).toEqual({ accepted: 2, open: 2 });
    connections.close();
  });

  test("an idle connection is closed after idleMs, and a service user keeps at most maxPerUser", async () => {
    const idle = pool({ idleMs: 200 });
    expect(await sshAdvertisedHead(url, "main", viaProxy, { ...opts, connections: idle })).toBe(head);
    await until("the idle connection to be closed", () => idle.size === 0 && proxy.open.size === 0);
    const capped = pool({ maxPerUser: 1 });
    expect(await sshAdvertisedHead(url, "main", viaProxy, { ...opts, connections: capped })).toBe(head);
    expect(await sshAdvertisedHead(`ssh://root@127.0.0.1:${v2.port}${repo}`, "main", viaProxy, { ...opts, connections: capped })).toBe(head);
    expect(capped.size).toBe(1);
    await until("the proxy's connection to be closed for the other one", () => proxy.open.size === 0);
    capped.close();
  });

  test("polls at once past the user's cap take turns on the kept connection instead of logging in again", async () => {
    const connections = pool({ maxPerUser: 1 });
    const before = { accepted: proxy.accepted, marks: await marks() };
    const ids = await Promise.all([0, 1, 2].map(() => sshAdvertisedHead(url, "main", viaProxy, { ...opts, connections })));
    expect(ids).toEqual([head, head, head]);
    expect({ accepted: proxy.accepted - before.accepted, runs: (await marks()) - before.marks, open: connections.size })
      .toEqual({ accepted: 1, runs: 3, open: 1 });
    connections.close();
  });

  test("close() ends every kept connection", async () => {
    const connections = pool();
    expect(await sshAdvertisedHead(url, "main", viaProxy, { ...opts, connections })).toBe(head);
    expect(proxy.open.size).toBe(1);
    connections.close();
    expect(connections.size).toBe(0);
    await until("the proxy to see the connection closed", () => proxy.open.size === 0);
  });
});
