/**
 * What `pgoctl svc//check` answers (DECISIONS.md #12): the verdict on the newest commit of the
 * branch, with each reason located in the compose file where the file says it.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { isMap, isScalar, isSeq, LineCounter, parseDocument } from "yaml";
import type { Node } from "yaml";
import type { Violation } from "./policy.ts";

/** One reason a compose file is refused, with the file and, when it is written there, the line. */
export interface Finding extends Violation {
  file: string;
  line?: number;
}

/** The verdict on one commit. */
export interface Verdict {
  /** The commit judged: the newest of the branch that pgod could learn of. */
  commit: string;
  branch: string;
  /** The commit deployed (what runs), null before the first deploy. */
  running: string | null;
  /** Null when the commit may be deployed, else why not (the text the log and `status` show). */
  refusal: string | null;
  /** The policy's reasons, when the refusal comes from the policy. */
  findings: Finding[];
  /** Why the remote could not be asked: the last fetched commit was judged instead. */
  stale?: string;
  /** Set while `pgoctl rollback` pins this commit: nothing newer deploys until `unpin`. */
  pinned?: string;
  /** What deploys differently than written (keys `docker stack deploy` leaves out). */
  warnings?: string[];
}

/** Largest file whose lines are looked up (the YAML screen allows no larger). */
const MAX_LOCATE_BYTES = 1024 * 1024;

/**
 * The violations with their file and, when the key is written in `file` itself (not in an
 * included or extended file), its line. Key paths are dotted (`services.web.privileged`), with
 * `[n]` for list items.
 */
export function locateFindings(dir: string, file: string, violations: readonly Violation[]): Finding[] {
  let root: Node | null = null;
  const lines = new LineCounter();
  try {
    const text = readFileSync(join(dir, file), "utf8");
    if (text.length <= MAX_LOCATE_BYTES) root = parseDocument(text, { lineCounter: lines, uniqueKeys: false }).contents;
  } catch {
    // The line is a help, not a need: without the file, findings have none.
  }
  return violations.map((v) => {
    const at = root ? offsetOf(root, v.key) : null;
    return { ...v, file, ...(at !== null ? { line: lines.linePos(at).line } : {}) };
  });
}

/** Where the deepest part of `path` written in the document starts (at least two levels deep), or null. */
function offsetOf(root: Node, path: string): number | null {
  let node: unknown = root;
  let rest = path;
  let depth = 0;
  let found: number | null = null;
  while (rest !== "" && node) {
    const index = /^\[(\d+)\]\.?/.exec(rest);
    if (index) {
      if (!isSeq(node)) break;
      const item = node.items[Number(index[1])] as Node | undefined;
      if (!item?.range) break;
      node = item;
      found = ++depth >= 2 ? item.range[0] : found;
      rest = rest.slice(index[0].length);
      continue;
    }
    if (!isMap(node)) break;
    // The longest key that starts the rest: keys may hold dots (service "web.v2").
    let best: { key: string; keyNode: Node; value: unknown } | null = null;
    for (const pair of node.items) {
      const k = isScalar(pair.key) ? String(pair.key.value) : null;
      if (k === null || !(rest === k || rest.startsWith(`${k}.`) || rest.startsWith(`${k}[`))) continue;
      if (!best || k.length > best.key.length) best = { key: k, keyNode: pair.key as Node, value: pair.value };
    }
    if (!best || !best.keyNode.range) break;
    node = best.value;
    found = ++depth >= 2 ? best.keyNode.range[0] : found;
    rest = rest.slice(best.key.length).replace(/^\./, "");
  }
  return found;
}

/** One finding as a line: `compose.yaml:7: service "web": services.web.privileged (rule privileged): reason: "value"`. */
export function formatFinding(f: Finding): string {
  const where = f.line !== undefined ? `${f.file}:${f.line}` : f.file;
  const service = f.service ? ` service "${f.service}":` : "";
  const value = f.value !== undefined ? `: "${f.value}"` : "";
  return `${where}:${service} ${f.key} (rule ${f.rule}): ${f.reason}${value}`;
}

/** The text `check` prints: the verdict, the commit judged, what runs, and each reason. */
export function formatVerdict(v: Verdict): string {
  const id = (c: string | null): string => (c === null ? "nothing" : c.slice(0, 12));
  const judged = `commit ${id(v.commit)}, the newest of branch "${v.branch}"`;
  const runs = v.running === null ? "nothing is deployed" : v.running === v.commit ? "it runs now" : `${id(v.running)} runs now`;
  const lines: string[] = [];
  if (v.refusal === null) lines.push(`ok: ${judged}, may be deployed (${runs})`);
  else {
    lines.push(`refused: ${judged} (${runs}${v.running === null || v.running === v.commit ? "" : " and keeps running"})`);
    lines.push(...(v.findings.length > 0 ? v.findings.map(formatFinding) : v.refusal.split("\n")));
  }
  for (const w of v.warnings ?? []) lines.push(`warning: ${w}`);
  if (v.pinned) lines.push(`pinned at ${id(v.pinned)}: nothing newer deploys until "unpin"`);
  return `${lines.join("\n")}\n`;
}
