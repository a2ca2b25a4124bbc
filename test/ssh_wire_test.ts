import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash, createPublicKey, verify as nodeVerify } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  checkPacketLength,
  deriveKey,
  ed25519Blob,
  encodeKexInit,
  exchangeHash,
  framePacket,
  GcmCipher,
  importEd25519Seed,
  MAX_PACKET_LENGTH,
  mpint,
  MSG,
  negotiate,
  parseKexInit,
  parseOpensshEd25519,
  SshProtocolError,
  SshReader,
  SshWriter,
  unpad,
  verifyEd25519,
  type KexInit,
} from "../src/ssh_wire.ts";

let dir: string;

function keygen(name: string, args: string[], passphrase = ""): string {
  const p = Bun.spawnSync(["ssh-keygen", "-q", ...args, "-N", passphrase, "-C", "test@pgo", "-f", join(dir, name)]);
  if (p.exitCode !== 0) throw new Error(p.stderr.toString());
  return join(dir, name);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "pgo-sshwire-"));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");

describe("SshReader and SshWriter", () => {
  test("round-trip bytes, booleans, uint32s, strings and name-lists", () => {
    const b = new SshWriter().byte(7).bool(true).uint32(0xdeadbeef).string("ünï").string(new Uint8Array([0, 1])).nameList(["a", "b-c@x"]).finish();
    const r = new SshReader(b);
    expect([r.byte(), r.bool(), r.uint32(), r.text(), [...r.bytes()], r.nameList()]).toEqual([7, true, 0xdeadbeef, "ünï", [0, 1], ["a", "b-c@x"]]);
    r.end();
  });

  test("a string longer than the packet, a short read and trailing bytes are malformed, never an overrun", () => {
    const long = new SshWriter().uint32(0xffffffff).raw(new Uint8Array(8)).finish();
    expect(() => new SshReader(long).bytes()).toThrow(SshProtocolError);
    expect(() => new SshReader(new Uint8Array(3)).uint32()).toThrow(SshProtocolError);
    expect(() => new SshReader(new Uint8Array(1)).end()).toThrow(SshProtocolError);
    expect(() => new SshReader(new SshWriter().string(new Uint8Array([0xff, 0xfe])).finish()).text()).toThrow(SshProtocolError);
  });

  test("name-lists with an empty name, a name over 64 characters, spaces or control characters are malformed", () => {
    for (const bad of ["a,,b", ",a", "a,", "x".repeat(65), "a b", "a\nb", "é"]) {
      expect(() => new SshReader(new SshWriter().string(bad).finish()).nameList()).toThrow(SshProtocolError);
    }
    const many = Array.from({ length: 200 }, (_, i) => `n${i}`).join(",");
    expect(() => new SshReader(new SshWriter().string(many).finish()).nameList()).toThrow(SshProtocolError);
    expect(new SshReader(new SshWriter().string("").finish()).nameList()).toEqual([]);
  });

  test("mpint() drops leading zeros and adds one before a high bit (RFC 4251 section 5)", () => {
    expect(hex(mpint(new Uint8Array([0, 0])))).toBe("00000000");
    expect(hex(mpint(new Uint8Array([0, 0x12, 0x34])))).toBe("000000021234");
    expect(hex(mpint(new Uint8Array([0x80, 1])))).toBe("00000003008001");
  });
});

const client: Omit<KexInit, "firstKexFollows"> = {
  kex: ["curve25519-sha256", "curve25519-sha256@libssh.org", "kex-strict-c-v00@openssh.com"],
  hostKey: ["ssh-ed25519"],
  cipherCs: ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"],
  cipherSc: ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"],
  macCs: ["hmac-sha2-256"],
  macSc: ["hmac-sha2-256"],
  compCs: ["none"],
  compSc: ["none"],
};

describe("KEXINIT", () => {
  test("encodeKexInit() and parseKexInit() round-trip, with a fresh cookie each time", () => {
    const a = encodeKexInit(client);
    const b = encodeKexInit(client);
    expect(a[0]).toBe(MSG.KEXINIT);
    expect(hex(a.subarray(1, 17))).not.toBe(hex(b.subarray(1, 17)));
    expect(parseKexInit(a)).toEqual({ ...client, firstKexFollows: false });
  });

  test("parseKexInit() refuses a truncated KEXINIT and one with trailing bytes", () => {
    const k = encodeKexInit(client);
    expect(() => parseKexInit(k.subarray(0, k.length - 1))).toThrow(SshProtocolError);
    const longer = new Uint8Array(k.length + 1);
    longer.set(k);
    expect(() => parseKexInit(longer)).toThrow(SshProtocolError);
  });

  test("negotiate() takes the client's first algorithm the server has and sees strict key exchange", () => {
    const server: KexInit = {
      ...client,
      kex: ["ecdh-sha2-nistp256", "curve25519-sha256@libssh.org", "kex-strict-s-v00@openssh.com"],
      cipherCs: ["aes256-gcm@openssh.com", "aes128-ctr"],
      cipherSc: ["aes128-ctr", "aes128-gcm@openssh.com"],
      firstKexFollows: false,
    };
    expect(negotiate({ ...client, firstKexFollows: false }, server)).toEqual({
      kex: "curve25519-sha256@libssh.org",
      hostKey: "ssh-ed25519",
      cipherCs: "aes256-gcm@openssh.com",
      cipherSc: "aes128-gcm@openssh.com",
      strict: true,
    });
    expect(negotiate({ ...client, firstKexFollows: false }, { ...server, kex: ["curve25519-sha256"] })).toMatchObject({ strict: false });
  });

  test("negotiate() names what is missing, and never picks a marker such as kex-strict as the key exchange", () => {
    const c = { ...client, firstKexFollows: false };
    expect(negotiate(c, { ...c, kex: ["kex-strict-c-v00@openssh.com", "diffie-hellman-group14-sha256"] })).toEqual({ missing: "key exchange" });
    expect(negotiate(c, { ...c, hostKey: ["rsa-sha2-256"] })).toEqual({ missing: "host key" });
    expect(negotiate(c, { ...c, cipherCs: ["aes128-ctr"] })).toEqual({ missing: "C->S cipher" });
    expect(negotiate(c, { ...c, cipherSc: ["chacha20-poly1305@openssh.com"] })).toEqual({ missing: "S->C cipher" });
    expect(negotiate(c, { ...c, compSc: ["zlib"] })).toEqual({ missing: "S->C compression" });
  });
});

describe("exchange hash and key derivation", () => {
  test("exchangeHash() hashes the eight fields as strings and K as an mpint (RFC 8731)", () => {
    const parts = {
      clientIdent: new TextEncoder().encode("SSH-2.0-a"),
      serverIdent: new TextEncoder().encode("SSH-2.0-b"),
      clientKexInit: new Uint8Array([20, 1]),
      serverKexInit: new Uint8Array([20, 2]),
      hostKey: new Uint8Array([3]),
      clientPublic: new Uint8Array(32).fill(4),
      serverPublic: new Uint8Array(32).fill(5),
      secret: mpint(new Uint8Array(32).fill(0x86)),
    };
    const s = (b: Uint8Array): Buffer => Buffer.concat([Buffer.from([0, 0, 0, b.length]), b]);
    const expected = createHash("sha256")
      .update(Buffer.concat([s(parts.clientIdent), s(parts.serverIdent), s(parts.clientKexInit), s(parts.serverKexInit), s(parts.hostKey), s(parts.clientPublic), s(parts.serverPublic)]))
      .update(Buffer.concat([Buffer.from([0, 0, 0, 33, 0]), Buffer.alloc(32, 0x86)]))
      .digest("hex");
    expect(hex(exchangeHash(parts))).toBe(expected);
  });

  test("deriveKey() is HASH(K || H || letter || session_id), extended with HASH(K || H || K1) (RFC 4253 section 7.2)", () => {
    const K = mpint(new Uint8Array(32).fill(9));
    const H = new Uint8Array(32).fill(1);
    const sid = new Uint8Array(32).fill(2);
    const k1 = createHash("sha256").update(K).update(H).update("C").update(sid).digest();
    const k2 = createHash("sha256").update(K).update(H).update(k1).digest();
    expect(hex(deriveKey(K, H, "C", sid, 16))).toBe(k1.subarray(0, 16).toString("hex"));
    expect(hex(deriveKey(K, H, "C", sid, 48))).toBe(Buffer.concat([k1, k2]).subarray(0, 48).toString("hex"));
  });
});

describe("binary packets", () => {
  test("framePacket() pads to the block (8 in the clear; 16 after the length with AES-GCM), at least 4 bytes of padding", () => {
    for (let n = 1; n < 70; n++) {
      const plain = framePacket(new Uint8Array(n), false);
      expect(plain.length % 8).toBe(0);
      expect(plain[4]).toBeGreaterThanOrEqual(4);
      checkPacketLength(plain.length - 4, false);
      expect(unpad(plain.subarray(4)).length).toBe(n);
      const gcm = framePacket(new Uint8Array(n), true);
      expect((gcm.length - 4) % 16).toBe(0);
      expect(gcm[4]).toBeGreaterThanOrEqual(4);
      checkPacketLength(gcm.length - 4, true);
    }
  });

  test("checkPacketLength() refuses a length over the limit, too short or out of alignment", () => {
    for (const [len, gcm] of [[MAX_PACKET_LENGTH + 4, false], [0xffffffff, true], [4, false], [0, true], [13, false], [17, true], [MAX_PACKET_LENGTH + 16, true]] as const) {
      expect(() => checkPacketLength(len, gcm)).toThrow("Bad packet length");
    }
  });

  test("unpad() refuses padding under 4 bytes or longer than the packet", () => {
    expect(() => unpad(new Uint8Array([3, 1, 0, 0, 0]))).toThrow("Bad padding length");
    expect(() => unpad(new Uint8Array([5, 1, 0, 0, 0, 0]))).toThrow("Bad padding length");
    expect([...unpad(new Uint8Array([4, 9, 0, 0, 0, 0]))]).toEqual([9]);
  });

  test("GcmCipher seals and opens packets in order, the length authenticated but in the clear", async () => {
    const key = new Uint8Array(16).fill(7);
    const iv = new Uint8Array(12).fill(3);
    const a = await GcmCipher.create(key, iv);
    const b = await GcmCipher.create(key, iv);
    for (const n of [1, 100, 32768]) {
      const framed = framePacket(new Uint8Array(n).fill(n & 0xff), true);
      const sealed = await a.seal(framed);
      expect(hex(sealed.subarray(0, 4))).toBe(hex(framed.subarray(0, 4)));
      expect(sealed.length).toBe(framed.length + 16);
      const body = await b.open(sealed.subarray(0, 4), sealed.subarray(4));
      expect(hex(body)).toBe(hex(framed.subarray(4)));
    }
  });

  test("GcmCipher: a changed tag, body or length is Invalid MAC, and so is a replayed packet (the nonce moved on)", async () => {
    const key = new Uint8Array(32).fill(1);
    const iv = new Uint8Array(12);
    const tx = await GcmCipher.create(key, iv);
    const framed = framePacket(new Uint8Array([MSG.IGNORE, 0, 0, 0, 0]), true);
    const sealed = await tx.seal(framed);
    for (const i of [sealed.length - 1, 10, 3]) {
      const bad = sealed.slice();
      bad[i]! ^= 1;
      const rx = await GcmCipher.create(key, iv);
      await expect(rx.open(bad.subarray(0, 4), bad.subarray(4))).rejects.toThrow("Invalid MAC");
    }
    const rx = await GcmCipher.create(key, iv);
    await rx.open(sealed.subarray(0, 4), sealed.subarray(4));
    await expect(rx.open(sealed.subarray(0, 4), sealed.subarray(4))).rejects.toThrow("Invalid MAC");
  });

  test("GcmCipher's invocation counter is the last 8 bytes of the nonce, carrying across bytes and not into the fixed field", async () => {
    const key = new Uint8Array(16).fill(2);
    const iv = Uint8Array.from([9, 9, 9, 9, 0, 0, 0, 0, 0, 0, 0, 0xff]);
    const c = await GcmCipher.create(key, iv);
    const framed = framePacket(new Uint8Array([MSG.IGNORE]), true);
    await c.seal(framed);
    const second = await c.seal(framed);
    const k = await crypto.subtle.importKey("raw", key, "AES-GCM", false, ["decrypt"]);
    const nonce = Uint8Array.from([9, 9, 9, 9, 0, 0, 0, 0, 0, 0, 1, 0]);
    const plain = await crypto.subtle.decrypt({ name: "AES-GCM", iv: nonce, additionalData: second.subarray(0, 4) }, k, second.subarray(4));
    expect(hex(new Uint8Array(plain))).toBe(hex(framed.subarray(4)));
    const wrap = await GcmCipher.create(key, Uint8Array.from([9, 9, 9, 9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
    await wrap.seal(framed);
    const wrapped = await wrap.seal(framed);
    const zero = Uint8Array.from([9, 9, 9, 9, 0, 0, 0, 0, 0, 0, 0, 0]);
    const p2 = await crypto.subtle.decrypt({ name: "AES-GCM", iv: zero, additionalData: wrapped.subarray(0, 4) }, k, wrapped.subarray(4));
    expect(hex(new Uint8Array(p2))).toBe(hex(framed.subarray(4)));
  });
});

describe("Ed25519 identities and signatures", () => {
  test("parseOpensshEd25519() reads an unencrypted key from ssh-keygen, and a signature with it verifies against its .pub", async () => {
    const path = keygen("id_ed25519", ["-t", "ed25519"]);
    const id = parseOpensshEd25519(await Bun.file(path).text());
    expect(id).not.toBeNull();
    const pub = (await Bun.file(`${path}.pub`).text()).split(" ")[1]!;
    expect(Buffer.from(id!.publicBlob).toString("base64")).toBe(pub);
    const data = new TextEncoder().encode("signed data");
    const sig = new Uint8Array(await crypto.subtle.sign("Ed25519", await importEd25519Seed(id!.seed), data));
    const raw = new SshReader(id!.publicBlob);
    raw.text();
    const der = Buffer.concat([Buffer.from("302a300506032b6570032100", "hex"), raw.bytes()]);
    expect(nodeVerify(null, data, createPublicKey({ key: der, format: "der", type: "spki" }), sig)).toBe(true);
    const blob = new SshWriter().string("ssh-ed25519").string(sig).finish();
    const key = new SshReader(id!.publicBlob);
    key.text();
    const pk = key.bytes();
    expect(await verifyEd25519(pk, blob, data)).toBe(true);
    expect(await verifyEd25519(pk, blob, new TextEncoder().encode("other data"))).toBe(false);
    expect(await verifyEd25519(pk, new SshWriter().string("ssh-rsa").string(sig).finish(), data)).toBe(false);
    expect(await verifyEd25519(pk, new SshWriter().string("ssh-ed25519").string(sig.subarray(1)).finish(), data)).toBe(false);
    expect(Buffer.from(ed25519Blob(pk)).equals(Buffer.from(id!.publicBlob))).toBe(true);
  });

  test("parseOpensshEd25519() leaves RSA, ECDSA, PEM, encrypted and damaged keys to the general parser (null)", async () => {
    const rsa = keygen("id_rsa", ["-t", "rsa", "-b", "2048"]);
    const ecdsa = keygen("id_ecdsa", ["-t", "ecdsa", "-b", "256"]);
    const pem = keygen("id_pem", ["-t", "rsa", "-b", "2048", "-m", "PEM"]);
    const enc = keygen("id_enc", ["-t", "ed25519"], "secret");
    for (const p of [rsa, ecdsa, pem, enc]) expect({ p, id: parseOpensshEd25519(await Bun.file(p).text()) }).toEqual({ p, id: null });
    const good = await Bun.file(keygen("id_ok", ["-t", "ed25519"])).text();
    const lines = good.trim().split("\n");
    const body = Buffer.from(lines.slice(1, -1).join(""), "base64");
    expect(parseOpensshEd25519(good)).not.toBeNull();
    // The private section's two check integers differ (what a wrong passphrase gives): after
    // the magic (15), "none" twice (16), empty KDF options (4), the key count (4), the public
    // blob (4 + 51) and the section's length (4).
    const damaged = Buffer.from(body);
    damaged[98]! ^= 1;
    const text = `${lines[0]}\n${damaged.toString("base64")}\n${lines.at(-1)}\n`;
    expect(parseOpensshEd25519(text)).toBeNull();
    expect(parseOpensshEd25519("not a key")).toBeNull();
    expect(parseOpensshEd25519(`${lines[0]}\n${body.subarray(0, 40).toString("base64")}\n${lines.at(-1)}\n`)).toBeNull();
  });
});
