import { describe, expect, test } from "bun:test";
import { quoteShellWord, splitShellWords } from "../src/shell_words.ts";

describe("splitShellWords()", () => {
  const cases: [string, string[]][] = [
    ["", []],
    [" \t\n ", []],
    ["ps", ["ps"]],
    ["  logs   --tail\t10\n", ["logs", "--tail", "10"]],
    ["svc//ps; touch /tmp/x", ["svc//ps;", "touch", "/tmp/x"]],
    ["echo $HOME `id` $(id) a|b a&b *.txt ~", ["echo", "$HOME", "`id`", "$(id)", "a|b", "a&b", "*.txt", "~"]],
    ["sh -c 'ls -l'", ["sh", "-c", "ls -l"]],
    [`'a "b" \\c'`, [`a "b" \\c`]],
    [`"a \\" \\\\ \\$ \\\` b"`, ["a \" \\ $ ` b"]],
    [`"\\n\\a"`, ["\\n\\a"]],
    [`"$HOME"`, ["$HOME"]],
    ["a\\ b c", ["a b", "c"]],
    ["\\'\\\"", [`'"`]],
    ["''", [""]],
    [`"" ''x`, ["", "x"]],
    [`a'b'"c"d`, ["abcd"]],
    ["a\\\nb", ["ab"]],
    ["a \\\n b", ["a", "b"]],
    ['"a\\\nb"', ["ab"]],
    ["'a\nb'", ["a\nb"]],
    ["héllo wörld 🙂", ["héllo", "wörld", "🙂"]],
  ];
  for (const [input, want] of cases) {
    test(`splits ${JSON.stringify(input)} into ${JSON.stringify(want)}`, () => {
      expect(splitShellWords(input)).toEqual(want);
    });
  }

  test("rejects an unterminated single quote with its column", () => {
    expect(() => splitShellWords("ab 'cd")).toThrow("Unterminated single quote at column 4");
  });

  test("rejects an unterminated double quote with its column", () => {
    expect(() => splitShellWords(`x "a\\"`)).toThrow("Unterminated double quote at column 3");
  });

  test("rejects a trailing backslash with its column", () => {
    expect(() => splitShellWords("ab\\")).toThrow("Trailing backslash at column 3");
  });
});

describe("quoteShellWord()", () => {
  test("leaves safe words bare", () => {
    for (const w of ["ps", "--tail=10", "a/b.c", "user@host:22", "50%", "a,b+c", "-"]) {
      expect(quoteShellWord(w)).toBe(w);
    }
  });

  test("quotes the empty string as ''", () => {
    expect(quoteShellWord("")).toBe("''");
    expect(splitShellWords(quoteShellWord(""))).toEqual([""]);
  });

  test("quotes embedded single quotes as '\\''", () => {
    expect(quoteShellWord("it's")).toBe(`'it'\\''s'`);
    expect(quoteShellWord("a b")).toBe("'a b'");
    expect(quoteShellWord("$x;")).toBe("'$x;'");
  });

  test("gives back every word of random strings through splitShellWords()", () => {
    // A fixed seed keeps failures reproducible.
    let seed = 42;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const alphabet = ["a", "Z", "0", " ", "\t", "\n", "'", '"', "\\", "$", "`", ";", "|", "&", "*", "#", "~", "=", "-", "é", "🙂", "\0"];
    for (let i = 0; i < 2000; i++) {
      const words = Array.from({ length: rand(5) }, () =>
        Array.from({ length: rand(8) }, () => alphabet[rand(alphabet.length)]!).join(""));
      const line = words.map(quoteShellWord).join(" ");
      expect(splitShellWords(line)).toEqual(words);
    }
  });
});
