/**
 * Screening of compose files before docker compose reads anything (DECISIONS #10): size, YAML
 * aliases, nesting, and every file pulled in through include and extends staying inside the
 * repository.
 */
import { lstat, realpath } from "node:fs/promises";
import { dirname, relative, resolve as resolvePath, sep } from "node:path";
import type { CST, Document, Node as YamlNode } from "yaml";
import { Composer, isAlias, isMap, isNode, isPair, isScalar, isSeq, Lexer, LineCounter, Parser } from "yaml";
import { FileError, PolicyError, errnoCode } from "./errors.ts";
import { readCapped } from "./files.ts";
import { isRecord } from "./json.ts";

// ---------------------------------------------------------------------------------------------
// YAML screening (DECISIONS #10)

/** Limits for screening compose files; every field has a default. */
export interface YamlLimits {
  /** Largest file in bytes (default 1 MiB). */
  maxBytes?: number;
  /** The yaml library's alias budget (`maxAliasCount`, default 100). */
  maxAliasCount?: number;
  /** Deepest nesting, counted in nodes from the document root, aliases expanded (default 64). */
  maxDepth?: number;
  /** Most nodes a document may have once its aliases are expanded (default 250,000). */
  maxNodes?: number;
  /** Most files one compose file may pull in through `include` and `extends`, itself included (default 50). */
  maxFiles?: number;
}

/** The limits used where a caller gives none. */
export const DEFAULT_YAML_LIMITS: Readonly<Required<YamlLimits>> = {
  maxBytes: 1024 * 1024,
  maxAliasCount: 100,
  maxDepth: 64,
  maxNodes: 250_000,
  maxFiles: 50,
};

/** Throws a PolicyError when `text` is too large, expands aliases too far, nests too deeply or is not YAML. */
export function screenYaml(text: string, file: string, limits: YamlLimits = {}): void {
  screenAndParse(text, file, { ...DEFAULT_YAML_LIMITS, ...limits });
}

/** Screens `text` and returns each of its documents as plain data. */
function screenAndParse(text: string, file: string, lim: Required<YamlLimits>): unknown[] {
  const refuse = (why: string): never => {
    throw new PolicyError(`Cannot use compose file "${file}": ${why}`);
  };
  // A string never has fewer UTF-8 bytes than UTF-16 units, so the cheap test comes first.
  if (text.length > lim.maxBytes || Buffer.byteLength(text, "utf8") > lim.maxBytes) {
    refuse(`it is larger than ${lim.maxBytes} bytes`);
  }
  const lines = new LineCounter();
  // uniqueKeys is off because the library checks it in quadratic time (30 s for 20,000 keys);
  // measureDocument checks it in linear time instead.
  const composer = new Composer({ merge: true, prettyErrors: false, uniqueKeys: false });
  let docs: Document.Parsed[];
  try {
    docs = [...composer.compose(guardedTokens(text, lines, lim.maxDepth))];
  } catch (e) {
    if (e instanceof TooDeep) refuse(`it nests deeper than ${lim.maxDepth} levels`);
    if (e instanceof RangeError) refuse("it nests too deeply to parse"); // the yaml library recursed too far
    throw e;
  }
  const out: unknown[] = [];
  for (const doc of docs) {
    const err = doc.errors[0];
    if (err) {
      const line = err.linePos?.[0].line ?? lines.linePos(err.pos[0]).line;
      refuse(`it is not valid YAML: line ${line}: ${err.message.split("\n")[0]}`);
    }
    measureDocument(doc, lim, lines, refuse);
    try {
      out.push(doc.toJS({ maxAliasCount: lim.maxAliasCount }));
    } catch (e) {
      if (e instanceof ReferenceError) refuse(`it uses YAML aliases too often (the limit is ${lim.maxAliasCount})`);
      // The yaml library throws plain Errors for some documents it parsed without complaint (a
      // merge key "<<" whose source is not a map): the file is at fault, so it is refused.
      refuse(`it is not valid YAML: ${e instanceof Error ? e.message.split("\n")[0] : String(e)}`);
    }
  }
  return out;
}

class TooDeep extends Error {}

/**
 * The CST tokens of `text`, stopping as soon as the parser's stack is deeper than the depth limit
 * allows. The yaml library's parser slows down badly on deep nesting (seconds for 200,000 `[`)
 * and its composer then overflows the call stack, so the exact depth check comes too late.
 */
function* guardedTokens(text: string, lines: LineCounter, maxDepth: number): Generator<CST.Token> {
  // Each level of nesting costs one or two stack entries; the exact check happens on the Document.
  const guard = 2 * maxDepth + 8;
  const parser = new Parser(lines.addNewLine);
  lines.addNewLine(0);
  for (const lexeme of new Lexer().lex(text)) {
    yield* parser.next(lexeme);
    if (parser.stack.length > guard) throw new TooDeep();
  }
  yield* parser.end();
}

/**
 * Counts the nodes and depth of a document as if every alias were expanded, which is what
 * docker compose's YAML decoder does. Linear in the size of the text: an anchored node is
 * measured once and each alias adds its memoized size.
 */
function measureDocument(
  doc: Document.Parsed,
  lim: Required<YamlLimits>,
  lines: LineCounter,
  refuse: (why: string) => never,
): void {
  const anchors = new Map<string, YamlNode>();
  const sizes = new Map<YamlNode, { size: number; height: number }>();
  const open = new Set<YamlNode>();
  let total = 0;
  const count = (n: number): void => {
    total += n;
    if (total > lim.maxNodes) refuse(`its YAML aliases expand to more than ${lim.maxNodes} nodes`);
  };
  const tooDeep = (): never => refuse(`it nests deeper than ${lim.maxDepth} levels`);
  const visit = (node: YamlNode, depth: number): { size: number; height: number } => {
    if (depth > lim.maxDepth) tooDeep();
    if (isAlias(node)) {
      const target = anchors.get(node.source);
      if (!target) return { size: 1, height: 0 }; // the yaml library reports the dangling alias
      if (open.has(target)) refuse(`the YAML alias "*${node.source}" refers to a node that contains it`);
      const m = sizes.get(target) ?? { size: 1, height: 0 };
      if (depth + m.height > lim.maxDepth) tooDeep();
      count(m.size);
      return m;
    }
    const anchor = node.anchor;
    if (anchor) {
      anchors.set(anchor, node);
      open.add(node);
    }
    count(1);
    let size = 1;
    let height = 0;
    const child = (c: unknown): void => {
      if (!isNode(c)) return;
      const r = visit(c, depth + 1);
      size += r.size;
      height = Math.max(height, r.height + 1);
    };
    if (isMap(node)) {
      const keys = new Set<string>();
      for (const pair of node.items) {
        if (!isScalar(pair.key) || pair.key.value === "<<") continue;
        const k = `${typeof pair.key.value}:${String(pair.key.value)}`;
        if (keys.has(k)) {
          const line = lines.linePos(pair.key.range?.[0] ?? 0).line;
          refuse(`it is not valid YAML: line ${line}: Map keys must be unique`);
        }
        keys.add(k);
      }
    }
    if (isMap(node) || isSeq(node)) {
      for (const item of node.items) {
        if (isPair(item)) {
          child(item.key);
          child(item.value);
        } else child(item);
      }
    }
    if (anchor) {
      open.delete(node);
      sizes.set(node, { size, height });
    }
    return { size, height };
  };
  if (isNode(doc.contents)) visit(doc.contents, 1);
}

/**
 * Screens a compose file and every file it pulls in through `include:` and `extends: file:`,
 * recursively. Only files inside `rootDir` are read; a path or symlink leading out of it, a
 * remote include, or a path built from a variable is refused, since docker compose would read
 * that file unscreened.
 */
export async function screenComposeTree(rootDir: string, composeFile: string, limits: YamlLimits = {}): Promise<Screened> {
  const lim = { ...DEFAULT_YAML_LIMITS, ...limits };
  const root = resolvePath(rootDir);
  const rootReal = await realpath(root);
  const main = resolvePath(root, composeFile);
  const name = (p: string): string => relative(root, p) || ".";
  const queue: { path: string; wd: string; from: string | null; kind?: Reference["kind"] }[] = [{ path: main, wd: dirname(main), from: null }];
  const envFiles = new Map<string, string>();
  const seen = new Set<string>();
  const queued = new Set<string>();
  const parsed = new Map<string, unknown[]>();
  while (queue.length > 0) {
    const item = queue.shift()!;
    const file = name(item.path);
    const refuse = (why: string): never => {
      throw new PolicyError(`Cannot use compose file "${file}": ${why}`);
    };
    if (!within(item.path, root)) refuse("it is outside the repository");
    let real: string;
    try {
      real = await realpath(item.path);
    } catch (e) {
      if (errnoCode(e) !== "ENOENT") refuse(`it cannot be resolved: ${errnoCode(e) ?? String(e)}`);
      if (item.from === null) refuse("it does not exist");
      continue; // docker compose reports the missing file itself
    }
    if (!within(real, rootReal)) {
      const link = await lstat(item.path).then((s) => s.isSymbolicLink(), () => false);
      refuse(link ? "it is a symlink out of the repository" : "its path leads out of the repository through a symlink");
    }
    const key = `${real}\0${item.wd}`;
    if (seen.has(key)) continue; // include cycles are docker compose's to report
    seen.add(key);
    let docs = parsed.get(real);
    if (!docs) {
      if (parsed.size >= lim.maxFiles) refuse(`it pulls in more than ${lim.maxFiles} files`);
      docs = screenAndParse(await readScreened(real, lim.maxBytes, refuse), file, lim);
      parsed.set(real, docs);
    }
    // docker compose reads a project's .env (the main one and each include's) and every
    // env_file while it loads the model: those files are screened as well.
    if (item.from === null || item.kind === "include") {
      for (const dir of new Set([item.wd, ...(item.from === null ? [root] : [])])) envFiles.set(resolvePath(dir, ".env"), name(resolvePath(dir, ".env")));
    }
    for (const env of envReferences(docs)) {
      if (typeof env.path !== "string") return refuse(`${env.kind} is not a path`);
      if (env.path.includes("$")) refuse(`${env.kind} "${env.path}" is built from a variable; write the path literally`);
      for (const base of new Set([item.wd, dirname(item.path)])) {
        const target = resolvePath(base, env.path);
        if (!within(target, root)) refuse(`${env.kind} "${env.path}" is outside the repository`);
        envFiles.set(target, name(target));
      }
    }
    for (const ref of references(docs)) {
      if (typeof ref.path !== "string") continue; // docker compose rejects it
      if (ref.path.includes("$")) refuse(`${ref.kind} "${ref.path}" is built from a variable; write the path literally`);
      if (/^[a-z][a-z0-9+.-]*:\/\//i.test(ref.path) || /^[^/\s]+@[^/\s]+:/.test(ref.path)) {
        refuse(`${ref.kind} "${ref.path}" is not a file in the repository`);
      }
      // Depending on the compose version, a relative path is resolved against the project
      // directory in effect or against the including file's own directory: screen both.
      for (const base of new Set([item.wd, dirname(item.path)])) {
        const target = resolvePath(base, ref.path);
        if (!within(target, root)) refuse(`${ref.kind} "${ref.path}" is outside the repository`);
        let wd = dirname(target);
        if (ref.kind === "include" && typeof ref.projectDir === "string") {
          if (ref.projectDir.includes("$")) refuse(`include project_directory "${ref.projectDir}" is built from a variable`);
          wd = resolvePath(base, ref.projectDir);
          // The included project's relative paths (binds, env files, its .env) start there.
          if (!within(wd, root)) refuse(`include project_directory "${ref.projectDir}" is outside the repository`);
          const wdReal = await realpath(wd).catch(() => wd);
          if (!within(wdReal, rootReal)) refuse(`include project_directory "${ref.projectDir}" leads out of the repository through a symlink`);
        } else if (ref.kind === "include" && ref.first !== undefined) {
          wd = dirname(resolvePath(base, ref.first));
        }
        const qkey = `${target}\0${wd}`;
        if (queued.has(qkey)) continue;
        queued.add(qkey);
        // Bounds the work a file can cause by naming the same files under many directories.
        if (queued.size > 4 * lim.maxFiles) refuse(`it pulls in more than ${lim.maxFiles} files`);
        queue.push({ path: target, wd, from: file, kind: ref.kind });
      }
    }
  }
  for (const [path, label] of envFiles) await screenEnvFile(root, rootReal, path, label, lim.maxBytes);
  // Only a lone file is judged from its text: a service pulled in from elsewhere may pull.
  const only = parsed.size === 1 ? [...parsed.values()][0]! : null;
  return { pulls: only === null || only.length !== 1 || pullsImages(only[0], { literal: true }) };
}

/** What screening a compose tree learned on the way. */
export interface Screened {
  /** False only when `docker compose pull --ignore-buildable` certainly has nothing to pull. */
  pulls: boolean;
}

/**
 * Whether `docker compose pull --ignore-buildable` may pull an image for `model` (a compose
 * model, resolved by `docker compose config` or, with `literal`, as written): false only when
 * every service builds its image or has `pull_policy` `never` or `build`. Anything unclear counts
 * as pulling: a service that `extends` another (in `literal` mode), a policy from a variable.
 */
export function pullsImages(model: unknown, o: { literal?: boolean } = {}): boolean {
  if (!isRecord(model)) return true;
  const services = model["services"];
  if (services === undefined || services === null) return false;
  if (!isRecord(services)) return true;
  return Object.values(services).some((svc) => {
    if (!isRecord(svc)) return true;
    if (o.literal && svc["extends"] !== undefined) return true;
    if (svc["build"] !== undefined && svc["build"] !== null) return false;
    const policy = svc["pull_policy"];
    return policy !== "never" && policy !== "build";
  });
}

interface Reference {
  kind: "include" | "extends file";
  path: unknown;
  /** For include: the first path, which sets the included project's directory. */
  first?: string;
  projectDir?: unknown;
}

/** The files a parsed compose file names in `include:` and `services.*.extends.file`. */
function references(docs: unknown[]): Reference[] {
  const out: Reference[] = [];
  for (const doc of docs) {
    if (!isRecord(doc)) continue;
    const inc = doc["include"];
    for (const entry of Array.isArray(inc) ? inc : []) {
      if (typeof entry === "string") out.push({ kind: "include", path: entry });
      else if (isRecord(entry)) {
        const paths = Array.isArray(entry["path"]) ? entry["path"] : [entry["path"]];
        const first = typeof paths[0] === "string" ? paths[0] : undefined;
        for (const p of paths) {
          out.push({ kind: "include", path: p, projectDir: entry["project_directory"], ...(first ? { first } : {}) });
        }
      }
    }
    const services = doc["services"];
    if (!isRecord(services)) continue;
    for (const svc of Object.values(services)) {
      if (!isRecord(svc)) continue;
      const ext = svc["extends"];
      if (isRecord(ext) && ext["file"] !== undefined) out.push({ kind: "extends file", path: ext["file"] });
    }
  }
  return out;
}

/** A path docker compose reads environment variables from. */
interface EnvReference {
  kind: "env_file" | "include env_file";
  path: unknown;
}

/** The env files a parsed compose file names: `services.*.env_file` and `include[].env_file`. */
function envReferences(docs: unknown[]): EnvReference[] {
  const out: EnvReference[] = [];
  const add = (kind: EnvReference["kind"], v: unknown): void => {
    for (const e of Array.isArray(v) ? v : v === undefined || v === null ? [] : [v]) {
      out.push({ kind, path: isRecord(e) ? e["path"] : e });
    }
  };
  for (const doc of docs) {
    if (!isRecord(doc)) continue;
    const inc = doc["include"];
    for (const entry of Array.isArray(inc) ? inc : []) if (isRecord(entry)) add("include env_file", entry["env_file"]);
    const services = doc["services"];
    if (!isRecord(services)) continue;
    for (const svc of Object.values(services)) if (isRecord(svc)) add("env_file", svc["env_file"]);
  }
  return out;
}

/**
 * Refuses an env file docker compose would read from outside the repository (by a symlink), or
 * that is not a small regular file (`/dev/zero`, a FIFO): compose reads it whole into memory.
 * A missing file is left to docker compose.
 */
async function screenEnvFile(root: string, rootReal: string, path: string, label: string, max: number): Promise<void> {
  const refuse = (why: string): never => {
    throw new PolicyError(`Cannot use env file "${label}": ${why}`);
  };
  if (!within(path, root)) refuse("it is outside the repository");
  let real: string;
  try {
    real = await realpath(path);
  } catch (e) {
    if (errnoCode(e) === "ENOENT") return;
    return refuse(`it cannot be resolved: ${errnoCode(e) ?? String(e)}`);
  }
  if (!within(real, rootReal)) refuse("it leads out of the repository through a symlink");
  await readScreened(real, max, refuse);
}

/** The text of a regular file of at most `max` bytes (files.ts readCapped); refused as `refuse` says otherwise. */
async function readScreened(path: string, max: number, refuse: (why: string) => never): Promise<string> {
  try {
    return Buffer.from(await readCapped(path, max)).toString("utf8");
  } catch (e) {
    if (e instanceof FileError) return refuse(e.why);
    throw e;
  }
}

export function within(path: string, root: string): boolean {
  return path === root || root === sep || path.startsWith(root + sep);
}
