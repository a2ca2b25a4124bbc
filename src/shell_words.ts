/** POSIX shell word splitting and quoting, without any expansion. */

const BLANK = " \t\n";
// Characters a backslash escapes inside double quotes; before any other character it stays.
const DQUOTE_ESCAPES = "\"\\$`\n";
const SAFE_WORD = /^[A-Za-z0-9_@%+=:,./-]+$/;

/** Splits `s` into words as a POSIX shell would, honouring quotes and backslashes but expanding nothing. */
export function splitShellWords(s: string): string[] {
  const words: string[] = [];
  let word = "";
  let inWord = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (BLANK.includes(c)) {
      if (inWord) words.push(word);
      word = "";
      inWord = false;
    } else if (c === "'") {
      const end = s.indexOf("'", i + 1);
      if (end < 0) throw new Error(`Unterminated single quote at column ${i + 1}`);
      word += s.slice(i + 1, end);
      inWord = true;
      i = end;
    } else if (c === '"') {
      let j = i + 1;
      for (; j < s.length && s[j] !== '"'; j++) {
        const d = s[j]!;
        const next = s[j + 1];
        if (d === "\\" && next !== undefined && DQUOTE_ESCAPES.includes(next)) {
          if (next !== "\n") word += next; // backslash-newline is a line continuation
          j++;
        } else {
          word += d;
        }
      }
      if (j >= s.length) throw new Error(`Unterminated double quote at column ${i + 1}`);
      inWord = true;
      i = j;
    } else if (c === "\\") {
      const next = s[i + 1];
      if (next === undefined) throw new Error(`Trailing backslash at column ${i + 1}`);
      i++;
      if (next === "\n") continue; // line continuation: neither a character nor a separator
      word += next;
      inWord = true;
    } else {
      word += c;
      inWord = true;
    }
  }
  if (inWord) words.push(word);
  return words;
}

/** Quotes `w` so that `splitShellWords` gives it back as one word; safe words stay bare. */
export function quoteShellWord(w: string): string {
  if (SAFE_WORD.test(w)) return w;
  return `'${w.replaceAll("'", `'\\''`)}'`;
}
