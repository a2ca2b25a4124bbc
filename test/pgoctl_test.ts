import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { UsageError } from "../src/errors.ts";
import { keysEqual, parseAuthorizedKeys, type PublicKey } from "../src/keys.ts";
import { memoryLogger } from "../src/log.ts";
import { parseArgs, requestText, runPgoctl, USAGE, VERSION, type Output } from "../src/pgoctl.ts";
import { startSshServer, type SshServer } from "../src/ssh_server.ts";
import type { SessionIO } from "../src/ssh_session.ts";
import { parseRequest } from "../src/target.ts";
import { waitFor } from "./helpers.ts";
import { runSync as sh } from "./kit/process.ts";

let dir: string;
let home: string;
let key: string; // path of the allowed ed25519 private key
let allowed: PublicKey[] = [];
let server: SshServer;
let port: string;
let aborted = 0;
let requests = 0; // requests the main server has run

/** The fake pgod: echoes the parsed request as JSON; `exit N` exits N; `flood` writes until the client goes away. */
async function handle(_key: unknown, command: string, io: SessionIO): Promise<number> {
  requests++;
  const r = parseRequest(command);
  if (r.command === "flood") {
    const chunk = new Uint8Array(32 * 1024).fill(121);
    while (!io.signal.aborted) await io.stdout.write(chunk);
    aborted++;
    return 0;
  }
  await io.stdout.write(`${JSON.stringify(r)}\n`);
  await io.stderr.write("note from pgod\n");
  return r.command === "exit" ? Number(r.args[0]) : 0;
}

async function startServer(listen: string, hostKeyPath: string, onRequest?: () => void): Promise<SshServer> {
  return await startSshServer({
    listen,
    hostKeyPath,
    isKnownKey: (k) => allowed.some((a) => keysEqual(a, k)),
    handle: async (k, c, io) => {
      onRequest?.();
      return await handle(k, c, io);
    },
    logger: memoryLogger(),
  });
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "pgoctl-"));
  home = join(dir, "home");
  for (const [name, args] of [
    ["id_ed25519", ["-t", "ed25519"]],
    ["id_rsa_pem", ["-t", "rsa", "-b", "2048", "-m", "PEM"]],
    ["id_ecdsa", ["-t", "ecdsa", "-b", "256"]],
    ["id_unknown", ["-t", "ed25519"]],
  ] as const) {
    sh(["ssh-keygen", "-q", ...args, "-N", "", "-f", join(dir, name)]);
  }
  sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", join(dir, "id_encrypted")]);
  for (const n of ["id_ed25519", "id_rsa_pem", "id_ecdsa"]) {
    allowed.push(...parseAuthorizedKeys(await readFile(join(dir, `${n}.pub`), "utf8")));
  }
  key = join(dir, "id_ed25519");
  server = await startServer("127.0.0.1:0", join(dir, "host_key_a"));
  port = String(server.port);
  hostPub = Bun.spawnSync(["ssh-keygen", "-y", "-f", join(dir, "host_key_a")]).stdout.toString().trim();
});

let hostPub: string; // the main server's host key, "ssh-ed25519 AAAA..."

afterAll(async () => {
  await server.close();
  await rm(dir, { recursive: true, force: true });
});

function memoryOutput(): { out: Output; text: () => string } {
  const chunks: Buffer[] = [];
  return {
    out: { write: async (c) => void chunks.push(Buffer.from(c)) },
    text: () => Buffer.concat(chunks).toString(),
  };
}

async function pgoctl(argv: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const o = memoryOutput();
  const e = memoryOutput();
  const code = await runPgoctl(argv, { stdout: o.out, stderr: e.out, env: { HOME: home, USER: "tester", ...env } });
  return { code, stdout: o.text(), stderr: e.text() };
}

describe("runPgoctl()", () => {
  test("exits with the remote exit status and passes stdout and stderr through", async () => {
    const r = await pgoctl(["-i", key, "-p", port, "127.0.0.1:web//exit", "42"]);
    expect(r.code).toBe(42);
    expect(JSON.parse(r.stdout)).toEqual({ service: "web", command: "exit", args: ["42"] });
    expect(r.stderr).toContain("note from pgod\n");
  });

  test("trusts an unknown host on first use and records it, then refuses a changed host key with exit 255", async () => {
    const kh = join(dir, "kh-tofu");
    const first = await pgoctl(["-i", key, "-p", port, "--known-hosts", kh, "127.0.0.1:web//ps"]);
    expect(first.code).toBe(0);
    expect(first.stderr).toContain(`Trusting "[127.0.0.1]:${port}" on first use`);
    const recorded = await readFile(kh, "utf8");
    expect(recorded).toStartWith(`[127.0.0.1]:${port} ssh-ed25519 AAAA`);

    const second = await pgoctl(["-i", key, "-p", port, "--known-hosts", kh, "127.0.0.1:web//ps"]);
    expect(second.code).toBe(0);
    expect(second.stderr).toBe("note from pgod\n");

    // Another server with another host key, which the file claims is at its address.
    let served = 0;
    const other = await startServer("127.0.0.1:0", join(dir, "host_key_b"), () => served++);
    try {
      await writeFile(kh, `# pgo hosts\n${recorded.replace(`:${port} `, `:${other.port} `)}`);
      const changed = await pgoctl(["-i", key, "-p", String(other.port), "--known-hosts", kh, "127.0.0.1:web//ps"]);
      expect(changed.code).toBe(255);
      expect(changed.stdout).toBe("");
      expect(changed.stderr).toContain(`Host key of "[127.0.0.1]:${other.port}" has changed`);
      expect(changed.stderr).toContain(`remove line 2 of "${kh}"`);
      expect(served).toBe(0);
    } finally {
      await other.close();
    }
  });

  test("arguments with spaces, quotes and shell characters arrive intact", async () => {
    const args = ["a b", "it's", 'say "hi"', "back\\slash", "$HOME", "", "tab\there", "new\nline", "*", ";", "ünï"];
    const r = await pgoctl(["-i", key, "-p", port, "127.0.0.1:web//exec", ...args]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).args).toEqual(args);
  });

  test("options after the target and after -- go to the remote command", async () => {
    const r = await pgoctl(["-i", key, "-p", port, "--", "127.0.0.1:web//logs", "--tail", "10", "-i", "x", "--", "-v", "-h"]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).args).toEqual(["--tail", "10", "-i", "x", "--", "-v", "-h"]);
    const r2 = await pgoctl([`--identity=${key}`, `--port=${port}`, "127.0.0.1:web//logs", "-p", "1", "--help"]);
    expect(r2.code).toBe(0);
    expect(JSON.parse(r2.stdout).args).toEqual(["-p", "1", "--help"]);
  });

  test("takes the key text from PGOCTL_ID, CRLF line ends included", async () => {
    const text = (await readFile(key, "utf8")).replace(/\n/g, "\r\n");
    const r = await pgoctl(["-p", port, "127.0.0.1:web//exit", "3"], { PGOCTL_ID: text });
    expect(r.code).toBe(3);
  });

  test("works with RSA (PEM) and ECDSA identities", async () => {
    for (const id of ["id_rsa_pem", "id_ecdsa"]) {
      const r = await pgoctl(["-i", join(dir, id), "-p", port, "127.0.0.1:web//exit", "5"]);
      expect({ id, code: r.code }).toEqual({ id, code: 5 });
    }
  });

  test("reaches a server on a bracketed IPv6 address", async () => {
    const v6 = await startServer("[::1]:0", join(dir, "host_key_a"));
    try {
      const kh = join(dir, "kh-v6");
      const r = await pgoctl(["-i", key, "-p", String(v6.port), "--known-hosts", kh, "[::1]:web//exit", "9"]);
      expect(r.code).toBe(9);
      expect(await readFile(kh, "utf8")).toStartWith(`[::1]:${v6.port} ssh-ed25519 `);
    } finally {
      await v6.close();
    }
  });

  test("a key the server does not accept gives exit 255 and says which key", async () => {
    const r = await pgoctl(["-i", join(dir, "id_unknown"), "-p", port, "127.0.0.1:web//ps"]);
    expect(r.code).toBe(255);
    expect(r.stdout).toBe("");
    expect(r.stderr).toMatch(/Cannot log in to "127\.0\.0\.1:\d+" as "tester": the server does not accept key SHA256:/);
  });

  test("an encrypted identity, a missing identity file and a refused connection give clear errors", async () => {
    const enc = await pgoctl(["-i", join(dir, "id_encrypted"), "-p", port, "127.0.0.1:web//ps"]);
    expect(enc.code).toBe(255);
    expect(enc.stderr).toContain("encrypted");
    const missing = await pgoctl(["-i", join(dir, "nope"), "-p", port, "127.0.0.1:web//ps"]);
    expect(missing.code).toBe(255);
    expect(missing.stderr).toContain(`Cannot read identity "${join(dir, "nope")}": ENOENT`);
    const noIdentity = await pgoctl(["-p", port, "127.0.0.1:web//ps"]);
    expect(noIdentity.code).toBe(64);
    expect(noIdentity.stderr).toContain("PGOCTL_ID");
    // A port nothing listens on: the one of a server that was closed.
    const gone = await startServer("127.0.0.1:0", join(dir, "host_key_a"));
    const gonePort = String(gone.port);
    await gone.close();
    const refused = await pgoctl(["-i", key, "-p", gonePort, "127.0.0.1:web//ps"]);
    expect(refused.code).toBe(255);
    expect(refused.stderr).toContain(`Cannot connect to "127.0.0.1:${gonePort}"`);
  });

  test("a closed stdout ends pgoctl quietly and the server sees the client go", async () => {
    let writes = 0;
    const closedPipe: Output = {
      write: async () => {
        if (writes++ > 0) throw Object.assign(new Error("write EPIPE"), { code: "EPIPE" });
      },
    };
    const e = memoryOutput();
    const before = aborted;
    const code = await runPgoctl(["-i", key, "-p", port, "127.0.0.1:web//flood"], {
      stdout: closedPipe,
      stderr: e.out,
      env: { HOME: home, USER: "tester" },
    });
    expect(code).toBe(141);
    expect(e.text()).not.toContain("EPIPE");
    await waitFor(() => aborted !== before, 5000, "the server to see the client go");
    expect(aborted).toBe(before + 1);
  });

  test("-h, -v and bad command lines", async () => {
    expect(await pgoctl(["-h"])).toEqual({ code: 0, stdout: USAGE, stderr: "" });
    expect(await pgoctl(["--version"])).toEqual({ code: 0, stdout: `pgoctl ${VERSION}\n`, stderr: "" });
    for (const argv of [[], ["-x", "h:s//c"], ["-p", "0", "h:s//c"], ["-p", "x", "h:s//c"], ["-i"], ["h:s"], ["::1:s//c"]]) {
      const r = await pgoctl(argv);
      expect({ argv, code: r.code }).toEqual({ argv, code: 64 });
      expect(r.stderr).toContain("Usage: pgoctl");
    }
  });
});

describe("host key checking for CI (--strict-host-keys, --host-key)", () => {
  test("--strict-host-keys and PGOCTL_STRICT_HOST_KEYS=1 refuse an unknown host with exit 255, run nothing and write nothing", async () => {
    const kh = join(dir, "kh-strict");
    for (const [flags, env] of [[["--strict-host-keys"], {}], [[], { PGOCTL_STRICT_HOST_KEYS: "1" }]] as const) {
      const before = requests;
      const r = await pgoctl(["-i", key, "-p", port, "--known-hosts", kh, ...flags, "127.0.0.1:web//ps"], env);
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 255, stdout: "" });
      expect(r.stderr).toContain(`Host key of "[127.0.0.1]:${port}" (ssh-ed25519 key SHA256:`);
      expect(r.stderr).toContain("strict host key checking is on");
      expect(requests).toBe(before);
      expect(await Bun.file(kh).exists()).toBe(false);
    }
    // A known host passes in strict mode, and the file stays as it was.
    await writeFile(kh, `[127.0.0.1]:${port} ${hostPub}\n`);
    const known = await pgoctl(["-i", key, "-p", port, "--known-hosts", kh, "--strict-host-keys", "127.0.0.1:web//ps"]);
    expect({ code: known.code, stderr: known.stderr }).toEqual({ code: 0, stderr: "note from pgod\n" });
    expect(await readFile(kh, "utf8")).toBe(`[127.0.0.1]:${port} ${hostPub}\n`);
  });

  test("--host-key and PGOCTL_HOST_KEY accept the server's key, as a public key or a known_hosts line, without known_hosts", async () => {
    const kh = join(dir, "kh-pinned-unused");
    for (const [flags, env] of [
      [["--host-key", `${hostPub} host@example`], {}],
      [[`--host-key=# pgod\n[127.0.0.1]:${port} ${hostPub}`], {}],
      [[], { PGOCTL_HOST_KEY: `${hostPub}\r\n` }],
    ] as const) {
      const r = await pgoctl(["-i", key, "-p", port, "--known-hosts", kh, ...flags, "127.0.0.1:web//ps"], env);
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: "note from pgod\n" });
    }
    expect(await Bun.file(kh).exists()).toBe(false);
  });

  test("--host-key refuses another key, and a known_hosts line for another host, with exit 255 and runs nothing", async () => {
    const other = (await readFile(join(dir, "id_unknown.pub"), "utf8")).trim();
    const kh = join(dir, "kh-pinned");
    await writeFile(kh, `[127.0.0.1]:${port} ${hostPub}\n`); // the pinned key wins over what known_hosts says
    for (const [flags, env] of [
      [["--host-key", other], {}],
      [[], { PGOCTL_HOST_KEY: other }],
      [["--host-key", `[127.0.0.1]:1 ${hostPub}`], {}],
      [["--host-key", other], { PGOCTL_HOST_KEY: hostPub }],
    ] as const) {
      const before = requests;
      const r = await pgoctl(["-i", key, "-p", port, "--known-hosts", kh, ...flags, "127.0.0.1:web//ps"], env);
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 255, stdout: "" });
      expect(r.stderr).toMatch(/is not the one given in (--host-key|PGOCTL_HOST_KEY)\n$/);
      expect(requests).toBe(before);
    }
  });

  test("a malformed --host-key or PGOCTL_STRICT_HOST_KEYS is a usage error (exit 64) before connecting", async () => {
    const before = requests;
    for (const [flags, env, message] of [
      [["--host-key", "ssh-ed25519 not-base64!"], {}, "Invalid host key in --host-key"],
      [["--host-key", "# only a comment"], {}, "Invalid host key in --host-key: it holds no key"],
      [[], { PGOCTL_HOST_KEY: "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIA==" }, "Invalid host key in PGOCTL_HOST_KEY"],
      [[], { PGOCTL_STRICT_HOST_KEYS: "maybe" }, 'Invalid PGOCTL_STRICT_HOST_KEYS "maybe"'],
      [["--strict-host-keys=1"], {}, 'Option "--strict-host-keys" takes no value'],
    ] as const) {
      const r = await pgoctl(["-i", key, "-p", port, ...flags, "127.0.0.1:web//ps"], env);
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 64, stdout: "" });
      expect(r.stderr).toContain(message);
    }
    expect(requests).toBe(before);
  });

  test("trust on first use never creates ~/.ssh: the host is trusted for this run and the note says it was not recorded", async () => {
    const bare = join(dir, "home-without-ssh");
    await mkdir(bare);
    const r = await pgoctl(["-i", key, "-p", port, "127.0.0.1:web//ps"], { HOME: bare });
    expect(r.code).toBe(0);
    expect(r.stderr).toContain(`but cannot record it in "${bare}/.ssh/known_hosts"`);
    expect(await readdir(bare)).toEqual([]);
  });
});

describe("parseArgs() and requestText()", () => {
  test("parseArgs() reads attached option values and stops at the target", () => {
    expect(parseArgs(["-ikey", "-p2200", "--known-hosts", "kh", "m:s//c", "-i", "x"])).toEqual({
      action: "run",
      identity: "key",
      port: 2200,
      knownHosts: "kh",
      target: { machine: "m", service: "s", command: "c" },
      args: ["-i", "x"],
    });
    expect(() => parseArgs(["--port", "70000", "m:s//c"])).toThrow(UsageError);
  });

  test("requestText() quotes only what needs quoting", () => {
    expect(requestText({ machine: "m", service: "web", command: "logs" }, ["--tail", "10", "a b", ""])).toBe(
      "web//logs --tail 10 'a b' ''",
    );
  });
});

describe("src/cmd/pgoctl.ts", () => {
  test("the entry point exits with the remote status and writes to the real stdout and stderr", async () => {
    const p = Bun.spawn(["bun", "src/cmd/pgoctl.ts", "-i", key, "-p", port, "127.0.0.1:web//exit", "42"], {
      cwd: join(import.meta.dir, ".."),
      env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: home, USER: "tester" },
      stdout: "pipe",
      stderr: "pipe",
    });
    const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    expect(code).toBe(42);
    expect(JSON.parse(stdout)).toEqual({ service: "web", command: "exit", args: ["42"] });
    expect(stderr).toContain("note from pgod");
  });
});
