/** Where each key of the pgod config file is, by line: smol-toml gives no positions, so the TOML text is scanned once more. */

/** Where keys are in the source: smol-toml gives no positions. */
export interface Locations {
  /** Line of each top-level key or table header. */
  root: Map<string, number>;
  blocks: { header: number; keys: Map<string, number> }[];
}

/** Finds the line of each top-level key and, per `[[services]]` block, of each key; `text` must be valid TOML. */
export function locate(text: string): Locations {
  const root = new Map<string, number>();
  const blocks: Locations["blocks"] = [];
  const setOnce = (m: Map<string, number>, k: string | undefined, n: number): void => {
    if (k !== undefined && !m.has(k)) m.set(k, n);
  };
  let keys = root; // where key assignments of the current table go
  let depth = 0; // nesting of [] and {} inside a value
  let quote = ""; // delimiter of an open multi-line string
  text.split("\n").forEach((line, i) => {
    const n = i + 1;
    let pos = 0;
    if (quote === "" && depth === 0) {
      pos = skipBlank(line, 0);
      if (line[pos] === "[") {
        const aot = line[pos + 1] === "[";
        const path = keyPath(line, pos + (aot ? 2 : 1)).keys;
        if (aot && path.length === 1 && path[0] === "services") {
          const block = { header: n, keys: new Map<string, number>() };
          blocks.push(block);
          keys = block.keys;
        } else {
          const last = blocks.at(-1);
          if (path[0] === "services" && last) setOnce(last.keys, path[1], n);
          else setOnce(root, path[0], n);
          keys = new Map(); // keys of a sub-table are not located
        }
        return;
      }
      if (pos < line.length && line[pos] !== "#" && line[pos] !== "\r") {
        const path = keyPath(line, pos);
        setOnce(keys, path.keys[0], n);
        pos = line.indexOf("=", path.end) + 1;
      }
    }
    for (let j = pos; j < line.length; j++) {
      const c = line.charAt(j);
      if (quote !== "") {
        if (c === "\\" && quote === '"""') j++;
        else if (line.startsWith(quote, j)) {
          // A closing delimiter may follow up to two quotes of the content: take the whole run.
          let k = j;
          while (line[k] === c && k - j < 5) k++;
          j = k - 1;
          quote = "";
        }
      } else if (c === "#") {
        break;
      } else if (c === '"' || c === "'") {
        if (line.startsWith(c.repeat(3), j)) {
          quote = c.repeat(3);
          j += 2;
        } else {
          j = skipString(line, j);
        }
      } else if (c === "[" || c === "{") {
        depth++;
      } else if (c === "]" || c === "}") {
        depth--;
      }
    }
  });
  return { root, blocks };
}

/** Parses a dotted key starting at `pos`; returns its parts and the position after it. */
function keyPath(line: string, pos: number): { keys: string[]; end: number } {
  const keys: string[] = [];
  for (;;) {
    pos = skipBlank(line, pos);
    const c = line[pos];
    if (c === '"' || c === "'") {
      const end = skipString(line, pos);
      const raw = line.slice(pos, end + 1);
      keys.push(c === "'" ? raw.slice(1, -1) : decodeBasic(raw));
      pos = end + 1;
    } else {
      const bare = /^[A-Za-z0-9_-]*/.exec(line.slice(pos))?.[0] ?? "";
      keys.push(bare);
      pos += bare.length;
    }
    pos = skipBlank(line, pos);
    if (line[pos] !== ".") return { keys, end: pos };
    pos++;
  }
}

/** Returns the index of the quote closing the one-line string opened at `pos`. */
function skipString(line: string, pos: number): number {
  const c = line[pos];
  let j = pos + 1;
  while (j < line.length && line[j] !== c) j += c === '"' && line[j] === "\\" ? 2 : 1;
  return j;
}

function skipBlank(line: string, pos: number): number {
  while (line[pos] === " " || line[pos] === "\t") pos++;
  return pos;
}

// TOML basic strings share JSON's common escapes; the rare others only cost a located line.
function decodeBasic(raw: string): string {
  try {
    const v: unknown = JSON.parse(raw);
    return typeof v === "string" ? v : raw.slice(1, -1);
  } catch {
    return raw.slice(1, -1);
  }
}
