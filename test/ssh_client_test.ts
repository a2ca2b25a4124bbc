/**
 * pgoctl's own SSH client (src/ssh_client.ts) against pgod's SSH server (ssh2) in-process, a real
 * OpenSSH sshd on loopback (its own config, host key and authorized_keys; not the system's), and
 * a scripted hostile server (test/ssh_fake_server.ts).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { keysEqual, parseAuthorizedKeys, type PublicKey } from "../src/keys.ts";
import { memoryLogger } from "../src/log.ts";
import { execSsh, SshClientError, type ExecOptions, type ExecResult } from "../src/ssh_client.ts";
import { startSshServer, type SshServer } from "../src/ssh_server.ts";
import type { SessionIO } from "../src/ssh_session.ts";
import { MSG, parseOpensshEd25519, SshReader, SshWriter, type Ed25519Identity, type KexInit } from "../src/ssh_wire.ts";
import { startFakeSshServer, makeHostKey, type FakeConn, type FakeSshServer } from "./ssh_fake_server.ts";

let dir: string;
let identity: Ed25519Identity;
let stranger: Ed25519Identity; // a key no server accepts
let allowed: PublicKey[];
let pgod: SshServer;
let gone = 0; // pgod requests that saw their client go

function sh(argv: string[]): string {
  const p = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe" });
  if (p.exitCode !== 0) throw new Error(`${argv.join(" ")}: ${p.stderr.toString()}`);
  return p.stdout.toString();
}

/** pgod's handler: `echo ARGS` writes them, `exit N`, `big N` writes N bytes, `flood` writes until the client goes. */
async function handle(_key: unknown, command: string, io: SessionIO): Promise<number> {
  const [name, ...args] = command.split(" ");
  if (name === "big") {
    const chunk = new Uint8Array(65536);
    for (let i = 0; i < chunk.length; i++) chunk[i] = i % 251;
    let left = Number(args[0]);
    while (left > 0) {
      await io.stdout.write(chunk.subarray(0, Math.min(left, chunk.length)));
      left -= chunk.length;
    }
    return 0;
  }
  if (name === "flood") {
    const chunk = new Uint8Array(32 * 1024).fill(121);
    while (!io.signal.aborted) await io.stdout.write(chunk);
    gone++;
    return 0;
  }
  await io.stdout.write(`${args.join(" ")}\n`);
  await io.stderr.write("to stderr\n");
  return name === "exit" ? Number(args[0]) : 0;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "pgo-sshclient-"));
  await chmod(dir, 0o755);
  for (const n of ["id", "stranger", "host"]) sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", join(dir, n)]);
  identity = parseOpensshEd25519(await readFile(join(dir, "id"), "utf8"))!;
  stranger = parseOpensshEd25519(await readFile(join(dir, "stranger"), "utf8"))!;
  allowed = parseAuthorizedKeys(await readFile(join(dir, "id.pub"), "utf8"));
  pgod = await startSshServer({
    listen: "127.0.0.1:0",
    hostKeyPath: join(dir, "pgod_host"),
    isKnownKey: (k) => allowed.some((a) => keysEqual(a, k)),
    handle,
    logger: memoryLogger(),
  });
});

afterAll(async () => {
  await pgod?.close();
  await rm(dir, { recursive: true, force: true });
});

interface Run {
  result?: ExecResult;
  error?: SshClientError;
  stdout: Buffer;
  stderr: string;
  hostKeys: Uint8Array[];
}

async function run(port: number, command: string, o: Partial<ExecOptions> = {}): Promise<Run> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const hostKeys: Uint8Array[] = [];
  const r: Run = { stdout: Buffer.alloc(0), stderr: "", hostKeys };
  try {
    r.result = await execSsh({
      host: "127.0.0.1",
      port,
      user: "tester",
      identity,
      command,
      checkHostKey: async (blob) => void hostKeys.push(blob),
      stdout: async (c) => void out.push(Buffer.from(c)),
      stderr: async (c) => void err.push(Buffer.from(c)),
      timeoutMs: 10_000,
      keepaliveMs: 15_000,
      keepaliveCountMax: 3,
      ...o,
    });
  } catch (e) {
    if (!(e instanceof SshClientError)) throw e;
    r.error = e;
  }
  r.stdout = Buffer.concat(out);
  r.stderr = Buffer.concat(err).toString();
  return r;
}

const failure = (r: Run): { stage: string | undefined; message: string | undefined } => ({ stage: r.error?.stage, message: r.error?.message });

describe("execSsh() against pgod's SSH server", () => {
  test("runs the command and returns its exit status, stdout and stderr, after showing the host key", async () => {
    const r = await run(pgod.port, "exit 42 a 'b'");
    expect({ result: r.result, stdout: r.stdout.toString(), stderr: r.stderr }).toEqual({
      result: { broken: false, code: 42 },
      stdout: "42 a 'b'\n",
      stderr: "to stderr\n",
    });
    const pub = (await readFile(join(dir, "pgod_host.pub"), "utf8").catch(() => "")).split(" ")[1];
    expect(r.hostKeys.length).toBe(1);
    if (pub) expect(Buffer.from(r.hostKeys[0]!).toString("base64")).toBe(pub);
  });

  test("streams 6 MB of output intact through the channel window", async () => {
    const r = await run(pgod.port, `big ${6 * 1024 * 1024 + 17}`);
    expect(r.result).toEqual({ broken: false, code: 0 });
    expect(r.stdout.length).toBe(6 * 1024 * 1024 + 17);
    for (const i of [0, 1, 65535, 65536, 3_000_001, r.stdout.length - 1]) expect(r.stdout[i]).toBe((i % 65536) % 251);
  });

  test("a key the server does not accept fails the login and runs nothing", async () => {
    const r = await run(pgod.port, "exit 1", { identity: stranger });
    expect(failure(r)).toEqual({ stage: "login", message: "All configured authentication methods failed" });
  });

  test("a host key the caller refuses ends the connection before the login: the command never runs", async () => {
    let ran = 0;
    const srv = await startSshServer({
      listen: "127.0.0.1:0",
      hostKeyPath: join(dir, "pgod_host"),
      isKnownKey: () => true,
      handle: async () => ++ran,
      logger: memoryLogger(),
    });
    try {
      const r = await run(srv.port, "exit 0", { checkHostKey: async () => "not this one" });
      expect(failure(r)).toEqual({ stage: "hostkey", message: "not this one" });
      expect(ran).toBe(0);
    } finally {
      await srv.close();
    }
  });

  test("a reader that goes away ends the connection at once, and the server sees the client go", async () => {
    const before = gone;
    let writes = 0;
    const r = await run(pgod.port, "flood", {
      stdout: async () => {
        if (writes++ > 2) throw new Error("EPIPE");
      },
    });
    expect(r.result).toEqual({ broken: true });
    const deadline = Date.now() + 5000;
    while (gone === before && Date.now() < deadline) await Bun.sleep(5);
    expect(gone).toBe(before + 1);
  });
});

interface Sshd {
  port: number;
  proc: ReturnType<typeof Bun.spawn>;
}

async function freePort(): Promise<number> {
  const s = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = s.port;
  s.stop(true);
  return port;
}

async function accepts(port: number): Promise<boolean> {
  try {
    const s = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {} } });
    s.end();
    return true;
  } catch {
    return false;
  }
}

async function startSshd(name: string, extra: string[]): Promise<Sshd> {
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const config = join(dir, `${name}.conf`);
    await writeFile(config, [
      `Port ${port}`, "ListenAddress 127.0.0.1", `HostKey ${join(dir, "host")}`, `PidFile ${join(dir, `${name}.pid`)}`,
      `AuthorizedKeysFile ${join(dir, "authorized_keys")}`, "PasswordAuthentication no", "KbdInteractiveAuthentication no",
      "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password", "UseDNS no", "LogLevel ERROR", ...extra, "",
    ].join("\n"));
    const proc = Bun.spawn(["/usr/sbin/sshd", "-D", "-e", "-f", config], { stdout: "ignore", stderr: "pipe" });
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline && proc.exitCode === null) {
      if (await accepts(port)) return { port, proc };
      await Bun.sleep(20); // polling for the port, not waiting out a fixed time
    }
    proc.kill();
    if (attempt >= 3) throw new Error(`sshd did not start: ${await new Response(proc.stderr).text()}`);
  }
}

describe("execSsh() against OpenSSH's sshd", () => {
  let sshd: Sshd;
  let rekeying: Sshd;
  let user: string;

  beforeAll(async () => {
    if (!(await Bun.file("/usr/sbin/sshd").exists())) throw new Error("sshd is missing: bash scripts/deps.sh installs openssh-server");
    await mkdir("/run/sshd", { recursive: true, mode: 0o755 }); // sshd's privilege separation directory
    await writeFile(join(dir, "authorized_keys"), await readFile(join(dir, "id.pub"), "utf8"));
    user = sh(["id", "-un"]).trim();
    // Rekey after every 64 KiB each way: many server-initiated key exchanges during one command.
    [sshd, rekeying] = await Promise.all([startSshd("plain", []), startSshd("rekey", ["RekeyLimit 64K"])]);
  });

  afterAll(async () => {
    sshd?.proc.kill();
    rekeying?.proc.kill();
    await Promise.all([sshd?.proc.exited, rekeying?.proc.exited]);
  });

  test("runs a shell command with its exit status, stdout and stderr", async () => {
    const r = await run(sshd.port, "echo out; echo err >&2; exit 3", { user });
    expect({ result: r.result, stdout: r.stdout.toString(), stderr: r.stderr, error: r.error }).toEqual({
      result: { broken: false, code: 3 },
      stdout: "out\n",
      stderr: "err\n",
      error: undefined,
    });
    const pub = (await readFile(join(dir, "host.pub"), "utf8")).split(" ")[1]!;
    expect(Buffer.from(r.hostKeys[0]!).toString("base64")).toBe(pub);
  });

  test("reports the signal that killed the command", async () => {
    const r = await run(sshd.port, "kill -TERM $$", { user });
    expect(r.result).toEqual({ broken: false, signal: "SIGTERM" });
  });

  test("keeps 3 MB of output intact across the server's re-keys (RekeyLimit 64K)", async () => {
    const file = join(dir, "random");
    const r = await run(rekeying.port, `head -c 3000000 /dev/urandom > ${file}; cat ${file}; sha256sum < ${file} >&2`, { user });
    expect({ error: r.error, result: r.result, bytes: r.stdout.length }).toEqual({ error: undefined, result: { broken: false, code: 0 }, bytes: 3000000 });
    expect(new Bun.CryptoHasher("sha256").update(r.stdout).digest("hex")).toBe(r.stderr.split(" ")[0]!);
  }, 60_000);

  test("a key sshd does not accept fails the login", async () => {
    const r = await run(sshd.port, "true", { user, identity: stranger });
    expect(failure(r)).toEqual({ stage: "login", message: "All configured authentication methods failed" });
  });
});

describe("execSsh() against a hostile server", () => {
  const servers: FakeSshServer[] = [];
  afterAll(() => {
    for (const s of servers) s.close();
  });
  async function fake(script: (c: FakeConn) => Promise<void>): Promise<FakeSshServer> {
    const s = await startFakeSshServer(script);
    servers.push(s);
    return s;
  }
  const ignore = new SshWriter().byte(MSG.IGNORE).string("x").finish();
  /** What the client sent that only comes after the key exchange. */
  const afterKex = (c: FakeConn): number[] => c.seen.filter((t) => [MSG.NEWKEYS, MSG.SERVICE_REQUEST, MSG.USERAUTH_REQUEST, MSG.CHANNEL_OPEN].includes(t as 21));

  test("a packet length over the limit fails at once, without waiting for the packet", async () => {
    const s = await fake(async (c) => {
      await c.identify();
      c.write(new Uint8Array([0x7f, 0xff, 0xff, 0xfc]));
    });
    const r = await run(s.port, "x");
    expect(failure(r)).toEqual({ stage: "connect", message: "Bad packet length: 2147483644" });
  });

  test("padding under 4 bytes or longer than the packet is refused", async () => {
    for (const pad of [3, 12]) {
      const s = await fake(async (c) => {
        await c.identify();
        c.write(new Uint8Array([0, 0, 0, 12, pad, MSG.IGNORE, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
      });
      expect(failure(await run(s.port, "x"))).toEqual({ stage: "connect", message: "Bad padding length" });
    }
  });

  test("an identification line over 255 bytes, 9 KB of lines before it, or SSH 1 is refused", async () => {
    for (const [junk, message] of [
      [`SSH-2.0-${"x".repeat(300)}\r\n`, "Identification line too long"],
      ["hello\r\n".repeat(1300), "No identification line from the server"],
      ["SSH-1.5-old\r\n", 'Unsupported protocol version: "SSH-1.5-old"'],
    ] as const) {
      const s = await fake(async (c) => c.write(junk));
      expect(failure(await run(s.port, "x"))).toEqual({ stage: "connect", message });
    }
  });

  test("a server without curve25519, ssh-ed25519 or AES-GCM, or guessing its key exchange, is left to ssh2 before its host key is judged", async () => {
    const cases: [Partial<KexInit>, string][] = [
      [{ kex: ["diffie-hellman-group14-sha256"] }, "Handshake failed: no matching key exchange algorithm"],
      [{ hostKey: ["rsa-sha2-512"] }, "Handshake failed: no matching host key algorithm"],
      [{ cipherSc: ["aes128-ctr"] }, "Handshake failed: no matching S->C cipher algorithm"],
      [{ firstKexFollows: true }, "Handshake failed: the server guesses its key exchange"],
    ];
    for (const [offer, message] of cases) {
      const s = await fake(async (c) => {
        await c.identify();
        await c.kex({ offer });
      });
      const r = await run(s.port, "x");
      expect(failure(r)).toEqual({ stage: "unsupported", message });
      expect(r.hostKeys).toEqual([]);
    }
  });

  test("a wrong host key signature fails the handshake before the host key is judged, and nothing follows", async () => {
    const s = await fake(async (c) => {
      await c.identify();
      await c.kex({ badSignature: true });
    });
    const r = await run(s.port, "x");
    expect(failure(r)).toEqual({ stage: "connect", message: "Handshake failed: signature verification failed" });
    expect(r.hostKeys).toEqual([]);
    expect(afterKex(s.conns[0]!)).toEqual([]);
  });

  test("a signature by another key than the host key it sent fails the same way", async () => {
    const other = await makeHostKey();
    const s = await fake(async (c) => {
      await c.identify();
      const blob = c.hostKey.blob;
      c.hostKey.blob = other.blob; // claims the other key, signs with its own
      await c.kex();
      c.hostKey.blob = blob;
    });
    const r = await run(s.port, "x");
    expect(failure(r)).toEqual({ stage: "connect", message: "Handshake failed: signature verification failed" });
    expect(afterKex(s.conns[0]!)).toEqual([]);
  });

  test("a refused host key sends nothing more: no NEWKEYS, no login, no command", async () => {
    const s = await fake(async (c) => {
      await c.identify();
      await c.kex();
      await c.login();
      await c.exec();
    });
    const r = await run(s.port, "x", { checkHostKey: async () => "changed" });
    expect(failure(r)).toEqual({ stage: "hostkey", message: "changed" });
    expect(afterKex(s.conns[0]!)).toEqual([]);
  });

  test("strict key exchange: a packet before KEXINIT or inside the key exchange is fatal; without it both are skipped", async () => {
    const plain = { kex: ["curve25519-sha256"] };
    for (const [o, message] of [
      [{ beforeKexInit: ignore }, "Handshake failed: KEXINIT not first packet in strict KEX mode"],
      [{ beforeNewKeys: ignore }, "Handshake failed: received packet 2 instead of 21"],
      [{ beforeKexInit: ignore, offer: plain }, undefined],
      [{ beforeNewKeys: ignore, offer: plain }, undefined],
    ] as const) {
      const s = await fake(async (c) => {
        await c.identify();
        await c.kex(o);
        await c.login();
        await c.exec();
        await c.exit(0);
      });
      const r = await run(s.port, "x");
      expect({ o, ...failure(r) }).toEqual({ o, stage: message ? "connect" : undefined, message });
    }
  });

  test("a packet whose GCM tag does not match fails with Invalid MAC", async () => {
    const s = await fake(async (c) => {
      await c.identify();
      await c.kex();
      await c.read();
      const p = await c.frame(new SshWriter().byte(MSG.SERVICE_ACCEPT).string("ssh-userauth").finish());
      p[p.length - 1]! ^= 0x40;
      c.write(p);
    });
    expect(failure(await run(s.port, "x"))).toEqual({ stage: "connect", message: "Invalid MAC" });
  });

  test("data past the granted window, a data packet over 32 KiB, or data for another channel ends the connection", async () => {
    const stuck = { stdout: () => new Promise<void>(() => {}) }; // grants no more window
    for (const [send, o, message] of [
      [async (c: FakeConn) => {
        for (let i = 0; i < 65; i++) await c.data(new Uint8Array(32768));
      }, stuck, "Received more data than the window allows"],
      [async (c: FakeConn) => c.data(new Uint8Array(33000)), {}, "Received more data than the window allows"],
      [async (c: FakeConn) => c.send(new SshWriter().byte(MSG.CHANNEL_DATA).uint32(7).string("x").finish()), {}, "Message for an unknown channel"],
    ] as const) {
      const s = await fake(async (c) => {
        await c.identify();
        await c.kex();
        await c.login();
        await c.exec();
        await send(c);
        await c.exit(0);
      });
      expect(failure(await run(s.port, "x", o))).toEqual({ stage: "session", message });
    }
  });

  test("follows a re-key the server starts; with strict key exchange the sequence numbers start again at 0 after it", async () => {
    for (const strict of [true, false]) {
      let expectedSeq = -1;
      let unimplemented = -1;
      const s = await fake(async (c) => {
        await c.identify();
        await c.kex(strict ? {} : { offer: { kex: ["curve25519-sha256"] } });
        await c.login();
        await c.exec();
        await c.data("before ");
        // IGNORE inside a re-key is allowed even in strict mode (strictness is for the first key exchange).
        await c.kex({ offer: { cipherSc: ["aes128-gcm@openssh.com"] }, beforeNewKeys: ignore });
        expectedSeq = c.sent;
        await c.send(new Uint8Array([150, 1, 2]));
        const u = await c.read();
        expect(u[0]).toBe(MSG.UNIMPLEMENTED);
        unimplemented = new SshReader(u, 1).uint32();
        await c.data("after");
        await c.exit(5);
      });
      const r = await run(s.port, "x");
      expect({ strict, result: r.result, stdout: r.stdout.toString(), errors: s.errors }).toEqual({
        strict,
        result: { broken: false, code: 5 },
        stdout: "before after",
        errors: [],
      });
      expect({ strict, unimplemented }).toEqual({ strict, unimplemented: strict ? 0 : expectedSeq });
      if (strict) expect(expectedSeq).toBe(0);
    }
  });

  test("a re-key that shows another host key ends the connection", async () => {
    const other = await makeHostKey();
    const s = await fake(async (c) => {
      await c.identify();
      await c.kex();
      await c.login();
      await c.exec();
      await c.kex({ hostKey: other });
    });
    expect(failure(await run(s.port, "x"))).toEqual({ stage: "session", message: "Handshake failed: the host key changed in a re-key" });
  });

  test("a DISCONNECT before the login fails with the server's words; one after the command started too", async () => {
    const bye = new SshWriter().byte(MSG.DISCONNECT).uint32(2).string("go away\x1b[31m").string("").finish();
    const before = await fake(async (c) => {
      await c.identify();
      await c.kex();
      await c.send(bye);
    });
    expect(failure(await run(before.port, "x"))).toEqual({ stage: "connect", message: "go away?[31m" });
    const after = await fake(async (c) => {
      await c.identify();
      await c.kex();
      await c.login();
      await c.exec();
      await c.send(bye);
    });
    expect(failure(await run(after.port, "x"))).toEqual({ stage: "session", message: "go away?[31m" });
  });

  test("a connection that ends after the command started, without closing the channel, returns what came (no exit status)", async () => {
    const s = await fake(async (c) => {
      await c.identify();
      await c.kex();
      await c.login();
      await c.exec();
      await c.data("partial");
      c.end();
    });
    const r = await run(s.port, "x");
    expect({ result: r.result, stdout: r.stdout.toString() }).toEqual({ result: { broken: false }, stdout: "partial" });
  });

  test("a server that never finishes the handshake times out", async () => {
    const s = await fake(async (c) => {
      await c.identify();
    });
    const started = Date.now();
    expect(failure(await run(s.port, "x", { timeoutMs: 300 }))).toEqual({ stage: "timeout", message: "Handshake timed out" });
    expect(Date.now() - started).toBeLessThan(5000);
  });

  test("a server that stops answering keepalives while the command runs ends the connection", async () => {
    const s = await fake(async (c) => {
      await c.identify();
      await c.kex();
      await c.login();
      await c.exec();
      for (;;) await c.read(); // and never answers
    });
    const r = await run(s.port, "x", { keepaliveMs: 50, keepaliveCountMax: 2 });
    expect(failure(r)).toEqual({ stage: "session", message: "Keepalive timeout" });
    expect(s.conns[0]!.seen.filter((t) => t === MSG.GLOBAL_REQUEST).length).toBeGreaterThanOrEqual(1);
  });

  test("a refused channel or exec request fails as such, and server text in messages is made printable", async () => {
    const refusedChannel = await fake(async (c) => {
      await c.identify();
      await c.kex();
      await c.read();
      await c.send(new SshWriter().byte(MSG.SERVICE_ACCEPT).string("ssh-userauth").finish());
      await c.read();
      await c.send(new SshWriter().byte(MSG.USERAUTH_BANNER).string("welcome").string("").finish());
      await c.send(new Uint8Array([MSG.USERAUTH_SUCCESS]));
      await c.read();
      await c.send(new SshWriter().byte(MSG.CHANNEL_OPEN_FAILURE).uint32(0).uint32(4).string("full\x1b[2J").string("").finish());
    });
    expect(failure(await run(refusedChannel.port, "x"))).toEqual({ stage: "exec", message: "(SSH) Channel open failure: full?[2J" });
    const refusedExec = await fake(async (c) => {
      await c.identify();
      await c.kex();
      await c.login();
      await c.read();
      await c.send(new SshWriter().byte(MSG.CHANNEL_OPEN_CONFIRMATION).uint32(0).uint32(3).uint32(1 << 20).uint32(32768).finish());
      await c.read();
      await c.send(new SshWriter().byte(MSG.CHANNEL_FAILURE).uint32(0).finish());
    });
    expect(failure(await run(refusedExec.port, "x"))).toEqual({ stage: "exec", message: "Unable to exec" });
    const signal = await fake(async (c) => {
      await c.identify();
      await c.kex();
      await c.login();
      await c.exec();
      await c.send(new SshWriter().byte(MSG.CHANNEL_REQUEST).uint32(0).string("exit-signal").bool(false).string("KILL\x1b]0;x\x07").bool(false).string("").string("").finish());
      await c.send(new SshWriter().byte(MSG.CHANNEL_CLOSE).uint32(0).finish());
    });
    expect((await run(signal.port, "x")).result).toEqual({ broken: false, signal: "SIGKILL?]0;x?" });
  });

  test("channels and requests the server opens are refused, and the command still runs", async () => {
    const s = await fake(async (c) => {
      await c.identify();
      await c.kex();
      await c.login();
      await c.exec();
      await c.send(new SshWriter().byte(MSG.GLOBAL_REQUEST).string("hostkeys-00@openssh.com").bool(true).finish());
      await c.send(new SshWriter().byte(MSG.CHANNEL_OPEN).string("auth-agent@openssh.com").uint32(9).uint32(1000).uint32(1000).finish());
      await c.send(new SshWriter().byte(MSG.CHANNEL_REQUEST).uint32(0).string("keepalive@openssh.com").bool(true).finish());
      const replies = [await c.read(), await c.read(), await c.read()].map((p) => p[0]);
      await c.data(replies.join(","));
      await c.exit(0);
    });
    const r = await run(s.port, "x");
    expect({ result: r.result, stdout: r.stdout.toString() }).toEqual({
      result: { broken: false, code: 0 },
      stdout: [MSG.REQUEST_FAILURE, MSG.CHANNEL_OPEN_FAILURE, MSG.CHANNEL_FAILURE].join(","),
    });
  });
});
