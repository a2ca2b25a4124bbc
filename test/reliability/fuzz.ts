/** A seeded random source for the fuzz tests, so that a failure can be replayed with its seed. */

/** A small, fast PRNG (mulberry32) with helpers for picking and building inputs. */
export class Rng {
  private s: number;

  constructor(readonly seed: number) {
    this.s = seed >>> 0;
  }

  /** A float in [0, 1). */
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** True with probability `p`. */
  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }

  /** `n` random bytes. */
  bytes(n: number): Uint8Array {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }

  /** A string of `n` pieces, each picked from `alphabet`. */
  from(alphabet: readonly string[], n: number): string {
    let s = "";
    for (let i = 0; i < n; i++) s += this.pick(alphabet);
    return s;
  }

  /** A random code point from a mix of ASCII, control characters, Latin-1, BMP and astral planes. */
  char(): string {
    switch (this.int(6)) {
      case 0:
        return String.fromCharCode(this.int(32));
      case 1:
        return String.fromCharCode(0x80 + this.int(0x80));
      case 2:
        return String.fromCodePoint(0x100 + this.int(0xd700));
      case 3:
        return String.fromCodePoint(0x10000 + this.int(0x10000));
      case 4:
        return this.pick(["\u0000", "\u2028", "\ufeff", "\ufffd", "\ud800", "\udfff", "\u202e"]);
      default:
        return String.fromCharCode(32 + this.int(95));
    }
  }

  /** Applies `n` random edits to `s`: flips, deletions, insertions, duplications and a truncation. */
  mutate(s: string, n: number, pieces: readonly string[]): string {
    for (let i = 0; i < n; i++) {
      const at = this.int(s.length + 1);
      switch (this.int(6)) {
        case 0: // flip one character
          s = s.slice(0, at) + this.char() + s.slice(at + 1);
          break;
        case 1: // delete a span
          s = s.slice(0, at) + s.slice(at + 1 + this.int(20));
          break;
        case 2: // insert a syntax piece
          s = s.slice(0, at) + this.pick(pieces) + s.slice(at);
          break;
        case 3: { // duplicate a span
          const len = this.int(60);
          s = s.slice(0, at) + s.slice(at, at + len) + s.slice(at);
          break;
        }
        case 4: // truncate
          s = s.slice(0, at);
          break;
        default: // a byte-level flip, decoded as UTF-8 would decode it
          s = s.slice(0, at) + new TextDecoder().decode(this.bytes(1 + this.int(4))) + s.slice(at);
      }
    }
    return s;
  }
}

/** The seed of this run: `PGO_FUZZ_SEED` when set (to replay a failure), else a fresh one. */
export function fuzzSeed(): number {
  const fixed = process.env["PGO_FUZZ_SEED"];
  if (fixed !== undefined && fixed !== "") return Number(fixed) >>> 0;
  return (Date.now() ^ (Math.random() * 0x100000000)) >>> 0;
}
