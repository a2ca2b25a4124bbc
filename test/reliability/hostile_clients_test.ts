/**
 * Hostile SSH clients against a running pgod with a real Docker engine: floods of connections
 * that never log in, a client that reads a big output very slowly, garbage after the banner, and
 * requests that are far too long or not UTF-8. Each case asserts that the limits hold, that pgod's
 * memory stays bounded and that a client with a valid key is still served promptly.
 * The tests run one after the other: each measures latency, and the test process itself is the
 * attacker, so running them at once would measure the test process more than pgod.
 * Run `bash scripts/build.sh` first.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { connect, type Socket } from "node:net";
import { openssh, preflight, processesWith, scenario, sweepRun, waitFor, waitRunning } from "../e2e/harness.ts";
import { Client, type ClientChannel } from "ssh2";
import { sshAlgorithms } from "../../src/ssh_server.ts";
import { keyWithText, percentile, rssMiB, RssSampler, serveOne, sshRequest } from "./util.ts";
import type { Answer, Service } from "./util.ts";

/** A client with a valid key must get its answer within this, whatever else goes on. */
const PROMPT_MS = 2_000;
/** pgod's resident memory must stay below this (an idle pgod uses about 100 MiB). */
const RSS_LIMIT_MIB = 300;

beforeAll(() => preflight());
afterAll(sweepRun);

/** Sends `n` pings one after the other with the service's key; returns the answers. */
async function pings(s: Service, n: number, gapMs = 200): Promise<Answer[]> {
  const out: Answer[] = [];
  for (let i = 0; i < n; i++) {
    out.push(await sshRequest(s.port, s.keyText, `${s.name}//ping`, { timeoutMs: 30_000 }));
    await Bun.sleep(gapMs);
  }
  return out;
}

/** One request that is not measured: the first login to a fresh pgod pays for warming up its crypto. */
async function warmUp(s: Service): Promise<void> {
  expect((await sshRequest(s.port, s.keyText, `${s.name}//ping`, { timeoutMs: 30_000 })).code).toBe(0);
}

/** Asserts every answer is a pong that came within PROMPT_MS; returns the latencies. */
function expectPrompt(what: string, answers: Answer[]): number[] {
  for (const a of answers) {
    expect({ what, code: a.code, stdout: a.stdout.split(" ")[0], error: a.error }).toEqual({ what, code: 0, stdout: "pong", error: undefined });
  }
  const ms = answers.map((a) => Math.round(a.ms));
  expect({ what, slowest: Math.max(...ms) < PROMPT_MS ? "prompt" : `${Math.max(...ms)} ms` }).toEqual({ what, slowest: "prompt" });
  return ms;
}

/** A TCP connection to pgod from `localAddress`; resolves when it is connected (or failed). */
function openRaw(port: number, localAddress: string, onClose: () => void): Promise<Socket> {
  return new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port, localAddress });
    s.on("error", () => {});
    // Reading what pgod sends is what lets the socket notice that pgod closed it.
    s.on("data", () => {});
    s.once("close", onClose);
    s.once("connect", () => resolve(s));
    s.once("error", () => resolve(s));
  });
}

describe("hostile SSH clients against a real pgod", () => {
  test("500 connections that never log in are capped at 64, and a client with a valid key is served promptly throughout", async () => {
    await scenario("unauthenticated flood", async (env) => {
      const s = await serveOne(env, "flood", { interval: "10m" });
      await warmUp(s);
      const idle = rssMiB(s.pg.proc.pid);
      const rss = new RssSampler(s.pg.proc.pid);
      const open = new Set<Socket>();
      let churn = false;
      let reconnects = 0;
      // Ten source addresses, fifty connections each; half say the SSH banner, half say nothing.
      const attacker = async (i: number): Promise<void> => {
        const sock = await openRaw(s.port, `127.0.0.${2 + (i % 10)}`, () => {
          open.delete(sock);
          if (churn) {
            reconnects++;
            setTimeout(() => churn && void attacker(i), 2000);
          }
        });
        if (sock.destroyed) return;
        open.add(sock);
        if (i % 2 === 0) sock.write("SSH-2.0-attacker_0.1\r\n");
      };
      try {
        await Promise.all(Array.from({ length: 500 }, (_, i) => attacker(i)));
        // Once the dust settles, pgod holds at most 64 of them.
        const held = await waitFor("the flood to settle at the cap", async () => {
          const before = open.size;
          await Bun.sleep(1000);
          return open.size === before ? before : -1;
        }, (n) => n >= 0, { timeoutMs: 30_000 });
        expect(held).toBeLessThanOrEqual(64);
        expect(held).toBeGreaterThan(0);
        const heldLatency = expectPrompt("while 500 connections were made and 64 held", await pings(s, 5));

        // Now every connection pgod drops is made again two seconds later: a steady churn of a few
        // hundred new connections a second, all of them evicting older ones.
        churn = true;
        for (let i = 0; i < 500 - open.size; i++) void attacker(1000 + i);
        await Bun.sleep(2000);
        const churnLatency = expectPrompt("while dropped connections are made again", await pings(s, 10));
        const other = await sshRequest(s.port, s.keyText, `${s.name}//status`, { timeoutMs: 30_000 });
        expect(other.code).toBe(0);
        churn = false;
        const peak = rss.stop();
        console.log(
          `unauthenticated flood: ${held} held after 500 opened; ${reconnects} reconnects; ping ms while held ${heldLatency.join(", ")}; ` +
          `during churn ${churnLatency.join(", ")}; pgod RSS idle ${Math.round(idle)} MiB, peak ${Math.round(peak)} MiB`,
        );
        expect(peak).toBeLessThan(RSS_LIMIT_MIB);
        expect(s.pg.lines(/msg="Too many SSH connections waiting to log in: dropping the oldest"/).length).toBeGreaterThanOrEqual(1);
      } finally {
        churn = false;
        rss.stop();
        for (const sock of open) sock.destroy();
      }
      expectPrompt("after the flood", await pings(s, 2));
      expect(s.pg.exitCode).toBeNull();
    });
  }, 300_000);

  test("one key trying to hold 150 idle logged-in connections gets at most 64, and another key's ping is answered within 2 s throughout", async () => {
    await scenario("idle sessions", async (env) => {
      const holder = await keyWithText(await env.tempDir(0o700), "holder");
      const s = await serveOne(env, "idle", { interval: "10m", files: { "ssh/holder.pub": holder.pub } });
      await warmUp(s);
      const held = new Set<Client>();
      let peakHeld = 0;
      let refused = 0;
      let stop = false;
      // 150 clients with the one key, from 127.0.0.2: each logs in and asks for nothing; when
      // it is refused or dropped, it tries again 10 s later (about 15 logins a second in all).
      const holdOne = (): void => {
        if (stop) return;
        const c = new Client();
        let up = false;
        c.on("ready", () => {
          up = true;
          held.add(c);
          peakHeld = Math.max(peakHeld, held.size);
        });
        c.on("error", () => {});
        c.on("close", () => {
          held.delete(c);
          if (!up) refused++;
          setTimeout(holdOne, 10_000);
        });
        c.connect({
          host: "127.0.0.1", port: s.port, localAddress: "127.0.0.2", username: "holder", privateKey: holder.text,
          algorithms: sshAlgorithms(), readyTimeout: 30_000, hostVerifier: () => true,
        });
      };
      try {
        // Spread over 7.5 s, so that the cap on connections waiting to log in (64) does not drop
        // the holder's own connections before the limits on logged-in ones are reached.
        for (let i = 0; i < 150; i++) setTimeout(holdOne, i * 50);
        await waitFor("the holder's logins to be refused past its cap", () => refused, (n) => n >= 80, { timeoutMs: 60_000 });
        const during = expectPrompt("while one key holds its connections", await pings(s, 10));
        // The holder's idle connections are closed after 10 s without a request: its 150 clients
        // keep coming back, and the other key is still served.
        await waitFor("the holder's idle connections to be closed", () => s.pg.lines(/msg="Closing SSH connection: no exec request after login"/).length, (n) => n > 0, {
          timeoutMs: 30_000,
        });
        const later = expectPrompt("while the holder's connections churn", await pings(s, 5));
        console.log(
          `150 idle connections of one key: at most ${peakHeld} held, ${refused} logins refused; ` +
          `the other key's ping ms ${during.join(", ")}; during churn ${later.join(", ")}`,
        );
        expect(peakHeld).toBeLessThanOrEqual(64);
        expect(peakHeld).toBeGreaterThan(0);
        expect(s.pg.lines(/msg="Refusing SSH login: too many connections logged in with this key"/).length).toBeGreaterThanOrEqual(1);
      } finally {
        stop = true;
        for (const c of held) c.end();
      }
      expect(s.pg.exitCode).toBeNull();
    });
  }, 300_000);

  test("a client that reads 300 MB of output very slowly keeps pgod's memory bounded, and others are served meanwhile", async () => {
    await scenario("slow reader", async (env) => {
      const s = await serveOne(env, "slow", { interval: "10m" });
      await warmUp(s);
      await waitRunning(s.name);
      const idle = rssMiB(s.pg.proc.pid);
      const rss = new RssSampler(s.pg.proc.pid);
      let got = 0;
      let channel: ClientChannel | null = null;
      let hangUp = (): void => {};
      const request = `${s.name}//exec web sh -c 'yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 300000000'`;
      // The client reads at most 32 KiB every 100 ms (320 KiB/s): the rest must wait in the
      // container, not in pgod.
      const slow = sshRequest(s.port, s.keyText, request, {
        timeoutMs: 120_000,
        onChannel: (ch, end) => {
          channel = ch;
          hangUp = end;
          ch.pause();
        },
      });
      const reader = setInterval(() => {
        let n = 0;
        for (let c: Buffer | null; n < 32 * 1024 && channel && (c = channel.read(8192) as Buffer | null) !== null;) n += c.length;
        got += n;
      }, 100);
      try {
        await waitFor("the first output", () => got, (n) => n > 0, { timeoutMs: 60_000 });
        const started = Date.now();
        const during: Answer[] = [];
        while (Date.now() - started < 15_000) during.push(...(await pings(s, 1, 500)));
        const latency = expectPrompt("while a client reads slowly", during);
        const peak = rss.stop();
        console.log(
          `slow reader: read ${(got / 1e6).toFixed(1)} MB of 300 MB in 15 s; ping ms ${latency.join(", ")}; ` +
          `pgod RSS idle ${Math.round(idle)} MiB, peak ${Math.round(peak)} MiB`,
        );
        expect(got).toBeLessThan(20 * 1024 * 1024);
        expect(peak).toBeLessThan(Math.min(RSS_LIMIT_MIB, idle + 100));
      } finally {
        clearInterval(reader);
        rss.stop();
        hangUp();
      }
      const answer = await slow;
      expect(answer).toMatchObject({ code: null, error: "hung up by the client" });
      // The exec is ended with the client (the whole process group), and pgod carries on.
      await waitFor("no docker compose exec left", () => processesWith(["--project-name", s.name, "exec"]), (ps) => ps.length === 0, { timeoutMs: 20_000 });
      await s.pg.waitForLog(new RegExp(`msg="SSH request" request=${s.name}//exec .*client_gone=true`), { timeoutMs: 20_000 });
      expectPrompt("after the slow reader left", await pings(s, 2));
    });
  }, 300_000);

  test("random bytes after the banner, garbage instead of a banner and absurd packet lengths are dropped and leave pgod serving", async () => {
    await scenario("garbage", async (env) => {
      const s = await serveOne(env, "garbage", { interval: "10m" });
      await warmUp(s);
      const rss = new RssSampler(s.pg.proc.pid);
      const kinds = [
        (): Buffer => Buffer.concat([Buffer.from("SSH-2.0-fuzz\r\n"), randomBytes(1 + Math.floor(Math.random() * 100_000))]),
        (): Buffer => randomBytes(1 + Math.floor(Math.random() * 10_000)),
        (): Buffer => Buffer.from(`SSH-2.0-${"x".repeat(100_000)}`),
        (): Buffer => Buffer.concat([Buffer.from("SSH-2.0-fuzz\r\n"), Buffer.from([0xff, 0xff, 0xff, 0xff, 0x04, 0x14]), randomBytes(64)]),
        (): Buffer => Buffer.concat([Buffer.from("SSH-2.0-fuzz\r\n"), Buffer.from([0, 0, 0, 12, 4, 20]), randomBytes(10), Buffer.from([0, 0, 0, 12, 4, 21]), randomBytes(10)]),
        (): Buffer => Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        (): Buffer => Buffer.from("SSH-1.5-old\r\n"),
        (): Buffer => Buffer.alloc(50_000, 0),
      ];
      // Made up front, so that the test process is not busy making them while it measures.
      const payloads = Array.from({ length: 320 }, (_, i) => kinds[i % kinds.length]!());
      let closedByServer = 0;
      const one = (i: number): Promise<void> => new Promise((resolve) => {
        const sock = connect({ host: "127.0.0.1", port: s.port });
        const timer = setTimeout(() => sock.destroy(), 3000);
        sock.on("error", () => {});
        sock.on("data", () => {});
        sock.once("close", () => {
          clearTimeout(timer);
          resolve();
        });
        sock.once("end", () => closedByServer++);
        sock.once("connect", () => {
          if (i % 9 === 8) sock.resetAndDestroy();
          else sock.write(payloads[i]!);
        });
      });
      const attack = (async () => {
        for (let round = 0; round < 8; round++) await Promise.all(Array.from({ length: 40 }, (_, i) => one(round * 40 + i)));
      })();
      const during = await pings(s, 8, 300);
      await attack;
      const peak = rss.stop();
      const latency = expectPrompt("while garbage arrives", during);
      console.log(`garbage: 320 hostile connections, ${closedByServer} closed by pgod; ping ms ${latency.join(", ")}; pgod RSS peak ${Math.round(peak)} MiB`);
      expect(closedByServer).toBeGreaterThan(100);
      expect(peak).toBeLessThan(RSS_LIMIT_MIB);
      expectPrompt("after the garbage", await pings(s, 2));
      expect(s.pg.exitCode).toBeNull();
    });
  }, 300_000);

  test("requests of 4097 bytes to 100 KB and requests that are not UTF-8 get 64, 77 or a dropped connection, and run nothing", async () => {
    await scenario("bad requests", async (env) => {
      const s = await serveOne(env, "badreq", { interval: "10m" });
      await warmUp(s);
      const name = s.name;
      const tooLong = (n: number): string => `${name}//ping ${"x".repeat(n - name.length - 7)}`;
      const bytes = (...parts: Array<string | number[]>): Buffer =>
        Buffer.concat(parts.map((p) => (typeof p === "string" ? Buffer.from(p) : Buffer.from(p))));
      const cases: Array<{ what: string; request: string | Buffer; expect: (a: Answer) => boolean }> = [
        { what: "4097 bytes", request: tooLong(4097), expect: (a) => a.code === 64 && a.stderr === "Request too long: 4097 bytes, the limit is 4096\n" },
        { what: "30 KB", request: tooLong(30_000), expect: (a) => a.code === 64 && a.stderr === "Request too long: 30000 bytes, the limit is 4096\n" },
        { what: "100 KB", request: tooLong(100_000), expect: (a) => a.code === 64 || (a.code === null && a.error !== undefined) },
        { what: "1 MB", request: tooLong(1_000_000), expect: (a) => a.code === 64 || (a.code === null && a.error !== undefined) },
        { what: "bad UTF-8 in an argument", request: bytes(`${name}//ping `, [0xff, 0xfe, 0x80]), expect: (a) => a.code === 64 && a.stderr === 'Command "ping" takes no arguments\n' },
        { what: "bad UTF-8 in the command", request: bytes(`${name}//`, [0xc3, 0x28]), expect: (a) => a.code === 64 && a.stderr.startsWith("Unknown command") },
        { what: "bad UTF-8 in the service", request: bytes([0xed, 0xa0, 0x80], "//ps"), expect: (a) => a.code === 77 },
        { what: "a NUL in the request", request: bytes(`${name}//ps`, [0], " x"), expect: (a) => a.code === 64 },
        { what: "a log line injected after a newline", request: `${name}//ping\n2030-01-01T00:00:00.000Z error msg=injected`, expect: (a) => a.code === 64 },
        { what: "an escape sequence as the service", request: "\u001b[2J\u001b]0;x\u0007//ps", expect: (a) => a.code === 77 },
        { what: "only blanks", request: " \t ", expect: (a) => a.code === 64 },
        { what: "an empty request", request: "", expect: (a) => a.code === 64 },
      ];
      const answers = await Promise.all(cases.map((c) => sshRequest(s.port, s.keyText, c.request, { timeoutMs: 30_000 })));
      const wrong = cases
        .map((c, i) => ({ what: c.what, ok: c.expect(answers[i]!), got: { code: answers[i]!.code, stderr: answers[i]!.stderr.slice(0, 200), error: answers[i]!.error } }))
        .filter((x) => !x.ok);
      expect(wrong).toEqual([]);
      console.log(`bad requests: ${cases.map((c, i) => `${c.what} -> ${answers[i]!.code ?? answers[i]!.error}`).join("; ")}`);
      // OpenSSH's client with a request of 100 KB: dropped (255) or refused (64), never run.
      const ssh = await openssh(s, tooLong(100_000));
      expect([64, 255]).toContain(ssh.code);
      // Nothing ran, no forged log line, and pgod serves on.
      expect(s.pg.lines(new RegExp(`msg=exec argv="docker compose --project-name ${s.name} .*\\bps\\b`))).toEqual([]);
      expect(s.pg.lines(/^\S+ error msg=injected/)).toEqual([]);
      expectPrompt("after the bad requests", await pings(s, 3));
      const p99 = percentile(answers.map((a) => a.ms), 99);
      expect(p99).toBeLessThan(30_000);
      expect(s.pg.exitCode).toBeNull();
    });
  }, 300_000);
});
