import { describe, expect, test } from "bun:test";
import { busiestAddress, DEFAULT_LIMITS, overLimit, type Peer } from "../src/ssh_limits.ts";

const peers = (...list: [string, string][]): Set<Peer> => new Set(list.map(([addr, fp]) => ({ addr, key: { fingerprint: fp } })));

describe("busiestAddress()", () => {
  test("names the address holding the most waiting connections, the first to get there on a tie", () => {
    expect(busiestAddress(peers(["a", ""], ["b", ""], ["b", ""], ["a", ""]))).toBe("b");
    expect(busiestAddress(peers(["a", ""], ["b", ""]))).toBe("a");
    expect(busiestAddress([])).toBe("");
  });
});

describe("overLimit()", () => {
  const limits = { ...DEFAULT_LIMITS, maxAuthenticated: 6, busyFrom: 3, maxPerKey: 2, maxPerAddress: 3 };

  test("lets a key use the free room past its own limit while the pool is not busy", () => {
    expect(overLimit(peers(["a", "k"], ["a", "k"]), "k", "a", limits)).toBeNull();
  });

  test("refuses a key, then an address, past its own limit once the pool is busy, and anyone when it is full", () => {
    expect(overLimit(peers(["a", "k"], ["b", "k"], ["c", "j"]), "k", "d", limits)).toBe("key");
    expect(overLimit(peers(["a", "1"], ["a", "2"], ["a", "3"]), "4", "a", limits)).toBe("address");
    expect(overLimit(peers(["a", "1"], ["b", "2"], ["c", "3"]), "4", "d", limits)).toBeNull();
    const full = peers(["a", "1"], ["b", "2"], ["c", "3"], ["d", "4"], ["e", "5"], ["f", "6"]);
    expect(overLimit(full, "7", "g", limits)).toBe("all");
  });
});
