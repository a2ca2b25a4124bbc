/**
 * The sandbox policy for compose files of non-root services: YAML screening before docker compose
 * reads anything, the compose model as docker compose itself resolves it (under a memory limit),
 * and the rules checked on that model.
 */
import { constants, lstatSync, readlinkSync } from "node:fs";
import { lstat, mkdir, open, readFile, realpath, rmdir, writeFile } from "node:fs/promises";
import { dirname, isAbsolute, join, relative, resolve as resolvePath, sep } from "node:path";
import type { CST, Document, Node as YamlNode } from "yaml";
import { Composer, isAlias, isMap, isNode, isPair, isScalar, isSeq, Lexer, LineCounter, Parser } from "yaml";
import type { ComposeTarget } from "./compose.ts";
import { composeEnv } from "./compose.ts";
import type { Runner } from "./exec.ts";
import { PolicyError } from "./errors.ts";

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
  const queue: { path: string; wd: string; from: string | null }[] = [{ path: main, wd: dirname(main), from: null }];
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
      if (errno(e) !== "ENOENT") refuse(`it cannot be resolved: ${errno(e) ?? String(e)}`);
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
      docs = screenAndParse(await readCapped(real, lim.maxBytes, refuse), file, lim);
      parsed.set(real, docs);
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
        } else if (ref.kind === "include" && ref.first !== undefined) {
          wd = dirname(resolvePath(base, ref.first));
        }
        const qkey = `${target}\0${wd}`;
        if (queued.has(qkey)) continue;
        queued.add(qkey);
        // Bounds the work a file can cause by naming the same files under many directories.
        if (queued.size > 4 * lim.maxFiles) refuse(`it pulls in more than ${lim.maxFiles} files`);
        queue.push({ path: target, wd, from: file });
      }
    }
  }
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

/** Reads at most `max` bytes of a regular file, never following a final symlink or blocking on a FIFO. */
async function readCapped(path: string, max: number, refuse: (why: string) => never): Promise<string> {
  const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    const st = await fh.stat();
    if (!st.isFile()) refuse("it is not a regular file");
    if (st.size > max) refuse(`it is larger than ${max} bytes`);
    const buf = Buffer.alloc(Math.min(st.size, max) + 1);
    let n = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
      if (bytesRead === 0) break;
      n += bytesRead;
      if (n > max) refuse(`it is larger than ${max} bytes`);
    }
    return buf.subarray(0, n).toString("utf8");
  } finally {
    await fh.close();
  }
}

function within(path: string, root: string): boolean {
  return path === root || root === sep || path.startsWith(root + sep);
}

function errno(e: unknown): string | undefined {
  return typeof e === "object" && e !== null && "code" in e && typeof e.code === "string" ? e.code : undefined;
}

// ---------------------------------------------------------------------------------------------
// The compose model and memory limits

export interface ModelOptions {
  /** Run docker compose inside this cgroup (see makeMemoryCgroup). */
  cgroupDir?: string;
  /** Default 60 s. */
  timeoutMs?: number;
  /**
   * "all" (the default) evaluates every service of every profile: `pgoctl svc//up NAME` makes
   * docker compose start a service of an inactive profile, so those must pass the policy too.
   * "active" gives the model `docker compose up` without service names starts.
   */
  profiles?: "all" | "active";
  /** Limits for the YAML screening that comes first. */
  limits?: YamlLimits;
}

const MODEL_TIMEOUT_MS = 60_000;

/**
 * The compose model as docker compose resolves it (`config --format json`), run as the service
 * user with the service's environment. The files are screened first (screenComposeTree), so a
 * YAML bomb never reaches docker compose.
 */
export async function composeModel(runner: Runner, target: ComposeTarget, opts: ModelOptions = {}): Promise<unknown> {
  await screenComposeTree(target.dir, target.file, opts.limits);
  const argv = ["docker", "compose", "--project-name", target.project, "--file", target.file];
  if ((opts.profiles ?? "all") === "all") argv.push("--profile", "*");
  argv.push("config", "--format", "json");
  const oomBefore = opts.cgroupDir ? await oomKills(opts.cgroupDir) : 0;
  const timeoutMs = opts.timeoutMs ?? MODEL_TIMEOUT_MS;
  const r = await runner(argv, {
    cwd: target.dir,
    env: composeEnv(target),
    as: target.account,
    timeoutMs,
    check: false,
    tag: { service: target.project, cmd: "compose", subcmd: "config" },
    ...(opts.cgroupDir ? { cgroup: opts.cgroupDir } : {}),
  });
  const file = target.file;
  if (r.timedOut) throw new Error(`docker compose rejects "${file}": it took longer than ${timeoutMs} ms`);
  if (opts.cgroupDir && (await oomKills(opts.cgroupDir)) > oomBefore) {
    throw new Error(`docker compose rejects "${file}": it ran out of its memory limit`);
  }
  if (r.exitCode !== 0 || r.signal) {
    const tail = r.stderr.split(`${target.dir}/`).join("").trim().split("\n").filter((l) => l.trim()).slice(-3).join(" | ");
    throw new Error(`docker compose rejects "${file}": ${tail || (r.signal ? `killed by ${r.signal}` : `exit status ${r.exitCode}`)}`);
  }
  try {
    return JSON.parse(r.stdout) as unknown;
  } catch {
    throw new Error(`docker compose rejects "${file}": it printed no JSON model`);
  }
}

/** How many processes the kernel's OOM killer has ended in a cgroup (v1 or v2); 0 if unknown. */
async function oomKills(dir: string): Promise<number> {
  for (const f of ["memory.oom_control", "memory.events"]) {
    const text = await readFile(join(dir, f), "utf8").catch(() => null);
    const m = text?.match(/^oom_kill (\d+)$/m);
    if (m) return Number(m[1]);
  }
  return 0;
}

const CGROUP_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/**
 * Makes (or updates) the memory cgroup `pgo/<name>` below pgod's own cgroup and limits it to
 * `bytes` (swap included). Uses the cgroup v1 memory controller when it is mounted, else
 * cgroup v2. Returns its directory, or null when no usable memory controller is found.
 */
export async function makeMemoryCgroup(name: string, bytes: number): Promise<string | null> {
  if (!CGROUP_NAME.test(name)) throw new Error(`Cannot make a memory cgroup for "${name}": not a plain name`);
  if (!Number.isInteger(bytes) || bytes <= 0) throw new Error(`Cannot make a memory cgroup for "${name}": bad limit ${bytes}`);
  const [self, mounts] = await Promise.all([
    readFile("/proc/self/cgroup", "utf8").catch(() => ""),
    readFile("/proc/self/mountinfo", "utf8").catch(() => ""),
  ]);
  const own = ownCgroups(self);
  for (const m of cgroupMounts(mounts)) {
    const path = m.v2 ? own.get("") : own.get("memory");
    if (path === undefined || (!m.v2 && !m.controllers.includes("memory"))) continue;
    const rel = path.startsWith(m.root) ? path.slice(m.root.length) : path;
    const base = join(m.mountPoint, rel);
    const dir = m.v2 ? await v2Cgroup(base, name, bytes) : await v1Cgroup(base, name, bytes);
    if (dir) return dir;
  }
  return null;
}

/** Removes a cgroup made by makeMemoryCgroup; false if it is still in use or cannot be removed. */
export async function removeMemoryCgroup(dir: string): Promise<boolean> {
  // A process the OOM killer just ended can keep the cgroup busy for a few milliseconds after
  // its parent saw it exit, so EBUSY is retried for a short, bounded while.
  for (let attempt = 0; ; attempt++) {
    try {
      await rmdir(dir);
      return true;
    } catch (e) {
      if (errno(e) === "ENOENT") return true;
      if (errno(e) !== "EBUSY" || attempt >= 25) return false;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

async function v1Cgroup(base: string, name: string, bytes: number): Promise<string | null> {
  const dir = join(base, "pgo", name);
  try {
    await mkdir(dir, { recursive: true });
    const limit = join(dir, "memory.limit_in_bytes");
    const memsw = join(dir, "memory.memsw.limit_in_bytes");
    const hasSwap = await lstat(memsw).then(() => true, () => false);
    // The memory+swap limit may never be below the memory limit, so the order depends on
    // whether the limit goes up or down.
    try {
      await writeFile(limit, String(bytes));
      if (hasSwap) await writeFile(memsw, String(bytes));
    } catch {
      if (hasSwap) await writeFile(memsw, String(bytes));
      await writeFile(limit, String(bytes));
    }
    const set = Number((await readFile(limit, "utf8")).trim());
    return set > 0 && set <= bytes ? dir : null;
  } catch {
    await rmdir(dir).catch(() => {});
    return null;
  }
}

async function v2Cgroup(base: string, name: string, bytes: number): Promise<string | null> {
  const parent = join(base, "pgo");
  const dir = join(parent, name);
  try {
    const controllers = await readFile(join(base, "cgroup.controllers"), "utf8");
    if (!controllers.split(/\s+/).includes("memory")) return null;
    // Fails with EBUSY when pgod's own cgroup holds processes and is not the root ("no internal
    // processes"); then cgroup v2 is not usable without delegation.
    await writeFile(join(base, "cgroup.subtree_control"), "+memory");
    await mkdir(parent, { recursive: true });
    await writeFile(join(parent, "cgroup.subtree_control"), "+memory");
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, "memory.max"), String(bytes));
    await writeFile(join(dir, "memory.swap.max"), "0").catch(() => {});
    return dir;
  } catch {
    await rmdir(dir).catch(() => {});
    return null;
  }
}

/** Controller ("" for cgroup v2) to cgroup path, from /proc/self/cgroup. */
function ownCgroups(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split("\n")) {
    const m = line.match(/^\d+:([^:]*):(.*)$/);
    if (!m) continue;
    for (const c of m[1]!.split(",")) out.set(c, m[2]!);
  }
  return out;
}

/** cgroup mounts from /proc/self/mountinfo, cgroup v1 first. */
function cgroupMounts(text: string): { root: string; mountPoint: string; v2: boolean; controllers: string[] }[] {
  const out: { root: string; mountPoint: string; v2: boolean; controllers: string[] }[] = [];
  for (const line of text.split("\n")) {
    const [pre, post] = line.split(" - ");
    if (!pre || !post) continue;
    const f = pre.split(" ");
    const [fstype, , superOpts = ""] = post.split(" ");
    if (fstype !== "cgroup" && fstype !== "cgroup2") continue;
    const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    out.push({
      root: unescape(f[3] ?? "/").replace(/\/$/, ""),
      mountPoint: unescape(f[4] ?? ""),
      v2: fstype === "cgroup2",
      controllers: superOpts.split(","),
    });
  }
  return out.sort((a, b) => Number(a.v2) - Number(b.v2));
}

// ---------------------------------------------------------------------------------------------
// The rules

/** One broken rule: which compose service, which key, which rule, and why. */
export interface Violation {
  service: string;
  /** Compose key path, such as `services.web.privileged` or `volumes.data.driver_opts`. */
  key: string;
  rule: string;
  reason: string;
  /** The offending value, when it helps (a path, a network name). */
  value?: string;
}

export interface PolicyContext {
  project: string;
  /** Directory the model's relative paths were resolved against (the files being evaluated). */
  repoDir: string;
  /** `<datadir>/<name>`. */
  dataDir: string;
  /** Allow-list of Docker network names; absent or empty allows all (DECISIONS #5). */
  networks?: string[];
  /** Resolves symlinks; for a path that does not exist, the deepest existing parent. */
  resolve?: (path: string) => string;
}

/** Every rule, with the compose key it concerns and a one-line reason (for errors and the manual). */
export const RULES: readonly { rule: string; key: string; reason: string }[] = [
  { rule: "privileged", key: "privileged", reason: "a privileged container has every capability and every host device, which makes it root on the host" },
  { rule: "network_host", key: "network_mode", reason: "the host's network namespace exposes every port the host listens on, localhost included" },
  { rule: "network_join", key: "network_mode", reason: "joining the network namespace of another project's container crosses into that project" },
  { rule: "network_not_allowed", key: "networks", reason: "only networks in this service's networks allow-list may be joined" },
  { rule: "ipc_host", key: "ipc", reason: "the host's IPC namespace exposes the shared memory and semaphores of host processes" },
  { rule: "ipc_shared", key: "ipc", reason: "sharing IPC with another project's container, or offering it with shareable, crosses project boundaries" },
  { rule: "pid_host", key: "pid", reason: "the host's PID namespace lets the container see and signal every process on the host" },
  { rule: "pid_join", key: "pid", reason: "joining the PID namespace of another project's container crosses into that project" },
  { rule: "userns_host", key: "userns_mode", reason: "userns_mode host turns off the engine's user-namespace remapping" },
  { rule: "uts_host", key: "uts", reason: "the host's UTS namespace lets the container change the host's hostname" },
  { rule: "cgroup_host", key: "cgroup", reason: "the host's cgroup namespace exposes the host's control groups" },
  { rule: "ports", key: "ports", reason: "published ports listen on the host's interfaces; use expose and the Caddy proxy" },
  { rule: "cap_add", key: "cap_add", reason: "added capabilities widen what root in the container may do to the host kernel" },
  { rule: "devices", key: "devices", reason: "host devices give direct access to hardware and to data outside the container" },
  { rule: "device_cgroup_rules", key: "device_cgroup_rules", reason: "device cgroup rules let the container create and open host device nodes" },
  { rule: "security_opt", key: "security_opt", reason: "turning off seccomp, AppArmor or SELinux confinement, or loading a custom seccomp profile, removes the kernel's guard rails" },
  { rule: "docker_socket", key: "volumes", reason: "the Docker socket gives full control of the engine, which is root on the host" },
  { rule: "bind_outside", key: "volumes", reason: "bind mounts from outside the checkout and the data directory expose the host's files" },
  { rule: "volume_bind_outside", key: "volumes.*.driver_opts", reason: "a volume whose driver options mount a host path outside the checkout and the data directory exposes the host's files" },
  { rule: "file_outside", key: "secrets|configs", reason: "secrets and configs from files outside the checkout and the data directory are bind mounts of host files" },
  { rule: "volumes_from", key: "volumes_from", reason: "volumes_from a container of another project reaches into that project's data" },
];

const REASON = new Map(RULES.map((r) => [r.rule, r.reason]));

const DOCKER_SOCKETS = ["/var/run/docker.sock", "/run/docker.sock"];

const UNCONFINED_SECURITY = new Set([
  "seccomp=unconfined", "apparmor=unconfined", "label=disable", "systempaths=unconfined",
  "label=type:spc_t", "label=type:unconfined_t",
]);

/**
 * Checks a compose model (the output of `docker compose config --format json`) against the
 * rules for a non-root service. The caller skips this for `user = "root"`.
 */
export function evaluatePolicy(model: unknown, ctx: PolicyContext): Violation[] {
  if (!isRecord(model)) throw new PolicyError("Cannot check the compose model: it is not a mapping");
  const resolve = ctx.resolve ?? resolveExisting;
  const roots = [resolve(ctx.repoDir), resolve(ctx.dataDir)];
  const sockets = new Set(DOCKER_SOCKETS.flatMap((s) => [s, resolve(s)]));
  const inside = (p: string): boolean => roots.some((r) => within(p, r));
  const allowed = ctx.networks && ctx.networks.length > 0 ? new Set(ctx.networks) : null;
  const services = isRecord(model["services"]) ? model["services"] : {};
  const topVolumes = isRecord(model["volumes"]) ? model["volumes"] : {};
  const topNetworks = isRecord(model["networks"]) ? model["networks"] : {};
  const ours = ourContainers(ctx.project, services);
  const out: Violation[] = [];

  for (const [svc, def] of Object.entries(services)) {
    if (!isRecord(def)) continue;
    // `key` is relative to the service unless it is a top-level path (`top`).
    const add = (key: string, rule: string, value?: unknown, top = false): void => {
      out.push({
        service: svc,
        key: top ? key : `services.${svc}.${key}`,
        rule,
        reason: REASON.get(rule)!,
        ...(value !== undefined ? { value: typeof value === "string" ? value : JSON.stringify(value) } : {}),
      });
    };
    const joinsOther = (v: string): boolean => v.startsWith("container:") && !ours.has(v.slice("container:".length));
    const mode = (key: string): string | null => {
      const v = def[key];
      if (v === undefined || v === null || v === "") return null;
      return typeof v === "string" ? v.trim() : JSON.stringify(v);
    };

    if (def["privileged"] !== undefined && def["privileged"] !== null && def["privileged"] !== false) {
      add("privileged", "privileged");
    }

    const net = mode("network_mode");
    if (net !== null) {
      const lower = net.toLowerCase();
      if (lower === "host") add("network_mode", "network_host", net);
      else if (lower.startsWith("container:")) {
        if (joinsOther(net)) add("network_mode", "network_join", net);
      } else if (!["none", "bridge", "default"].includes(lower) && !lower.startsWith("service:")) {
        // Any other value names a Docker network to join.
        if (allowed && !allowed.has(net)) add("network_mode", "network_not_allowed", net);
      }
    }

    const ipc = mode("ipc");
    if (ipc !== null) {
      const lower = ipc.toLowerCase();
      if (lower === "host") add("ipc", "ipc_host", ipc);
      else if (!(lower === "private" || lower === "none" || lower.startsWith("service:") ||
        (lower.startsWith("container:") && !joinsOther(ipc)))) add("ipc", "ipc_shared", ipc);
    }

    const pid = mode("pid");
    if (pid !== null) {
      if (pid.toLowerCase() === "host") add("pid", "pid_host", pid);
      else if (!pid.startsWith("service:") && (!pid.startsWith("container:") || joinsOther(pid))) add("pid", "pid_join", pid);
    }
    for (const [key, rule] of [["userns_mode", "userns_host"], ["uts", "uts_host"], ["cgroup", "cgroup_host"]] as const) {
      const v = mode(key);
      if (v !== null && v.toLowerCase() === "host") add(key, rule, v);
    }

    for (const key of ["ports", "cap_add", "devices", "device_cgroup_rules"] as const) {
      if (nonEmpty(def[key])) add(key, key);
    }

    for (const opt of asList(def["security_opt"])) {
      const s = typeof opt === "string" ? opt.trim() : JSON.stringify(opt);
      const m = s.match(/^([^=:]+)[=:](.*)$/);
      const k = (m?.[1] ?? s).trim().toLowerCase();
      const v = (m?.[2] ?? "").trim();
      const norm = `${k}=${v.toLowerCase()}`;
      const customSeccomp = k === "seccomp" && v !== "" && !["unconfined", "builtin", "default"].includes(v.toLowerCase());
      if (UNCONFINED_SECURITY.has(norm) || customSeccomp) add("security_opt", "security_opt", s);
    }

    for (const vol of asList(def["volumes"])) {
      const m = mountOf(vol, ctx.repoDir);
      if (!m) continue;
      if (m.type === "bind") {
        const real = resolve(m.source);
        if (sockets.has(real) || sockets.has(m.source)) add("volumes", "docker_socket", m.source);
        else if (!inside(real)) add("volumes", "bind_outside", m.source);
      } else if (m.type === "volume" && m.source) {
        const top = topVolumes[m.source];
        const opts = isRecord(top) && isRecord(top["driver_opts"]) ? top["driver_opts"] : null;
        if (!opts) continue;
        const device = opts["device"];
        const o = typeof opts["o"] === "string" ? opts["o"] : "";
        const binds = o.split(",").some((x) => ["bind", "rbind"].includes(x.trim()));
        if (typeof device === "string" && (binds || device.startsWith("/"))) {
          if (!isAbsolute(device) || !inside(resolve(device))) add(`volumes.${m.source}.driver_opts`, "volume_bind_outside", device, true);
        } else if (binds) add(`volumes.${m.source}.driver_opts`, "volume_bind_outside", undefined, true);
      }
    }

    for (const kind of ["secrets", "configs"] as const) {
      const top = isRecord(model[kind]) ? model[kind] : {};
      for (const ref of asList(def[kind])) {
        const src = typeof ref === "string" ? ref : isRecord(ref) ? ref["source"] : undefined;
        if (typeof src !== "string") continue;
        const entry = top[src];
        const f = isRecord(entry) ? entry["file"] : undefined;
        if (typeof f !== "string") continue;
        const abs = resolvePath(ctx.repoDir, f);
        if (!inside(resolve(abs))) add(`${kind}.${src}.file`, "file_outside", f, true);
      }
    }

    for (const from of asList(def["volumes_from"])) {
      if (typeof from !== "string") continue;
      const name = from.startsWith("container:") ? from.slice("container:".length).replace(/:(ro|rw)$/, "") : null;
      if (name !== null && !ours.has(name)) add("volumes_from", "volumes_from", from);
    }

    if (allowed) {
      const nets = def["networks"];
      const keys = Array.isArray(nets) ? nets.filter((n): n is string => typeof n === "string") : isRecord(nets) ? Object.keys(nets) : [];
      for (const key of keys) {
        const top = topNetworks[key];
        const dockerName = isRecord(top) && typeof top["name"] === "string" ? top["name"] : key;
        const external = isRecord(top) && top["external"] !== undefined && top["external"] !== false && top["external"] !== null;
        // A network is the project's own only when it has the name compose gives it; any other
        // name may join an existing network (compose only warns), so the allow-list applies.
        const own = !external && dockerName === `${ctx.project}_${key}`;
        if (!own && !allowed.has(dockerName)) add(`networks.${key}`, "network_not_allowed", dockerName);
      }
    }
  }
  return out;
}

/** One line per violation: `compose file "compose.yaml" service "web": "privileged" is refused: <reason>`. */
export function formatViolations(file: string, v: Violation[]): string {
  return v.map((x) => {
    const prefix = `services.${x.service}.`;
    const key = x.key.startsWith(prefix) ? x.key.slice(prefix.length) : x.key;
    const where = x.service ? ` service "${x.service}"` : "";
    return `compose file "${file}"${where}: "${key}" is refused: ${x.reason}${x.value !== undefined ? `: "${x.value}"` : ""}`;
  }).join("\n");
}

/** Names a container of this project can have: its container_name, or `<project>-<service>-<n>`. */
function ourContainers(project: string, services: Record<string, unknown>): { has(name: string): boolean } {
  const named = new Set<string>();
  for (const def of Object.values(services)) {
    if (isRecord(def) && typeof def["container_name"] === "string") named.add(def["container_name"]);
  }
  return {
    has(name) {
      if (named.has(name)) return true;
      const m = name.match(/^(.+)[-_]\d+$/);
      if (!m || !m[1]!.startsWith(project)) return false;
      const rest = m[1]!.slice(project.length);
      return (rest.startsWith("-") || rest.startsWith("_")) && Object.hasOwn(services, rest.slice(1));
    },
  };
}

/** A volume entry as type and source, from the long syntax or the short one. */
function mountOf(vol: unknown, base: string): { type: string; source: string } | null {
  if (typeof vol === "string") {
    const src = vol.split(":")[0] ?? "";
    if (src.startsWith("/") || src.startsWith(".") || src.startsWith("~")) return { type: "bind", source: resolvePath(base, src) };
    return { type: "volume", source: src };
  }
  if (!isRecord(vol)) return null;
  const source = typeof vol["source"] === "string" ? vol["source"] : "";
  const type = typeof vol["type"] === "string" ? vol["type"] : source.startsWith("/") ? "bind" : "volume";
  return { type, source: type === "bind" ? resolvePath(base, source) : source };
}

/**
 * realpath for paths that need not exist: follows every symlink, dangling ones included (the
 * engine creates a missing bind source through them), and keeps the missing rest as written.
 */
export function resolveExisting(path: string): string {
  const pending = resolvePath(path).split("/").filter(Boolean);
  let cur = "/";
  let links = 0;
  while (pending.length > 0) {
    const part = pending.shift()!;
    if (part === ".") continue;
    if (part === "..") {
      cur = dirname(cur);
      continue;
    }
    const next = join(cur, part);
    let link: string | null = null;
    try {
      if (lstatSync(next).isSymbolicLink()) link = readlinkSync(next);
    } catch {
      // Missing: the rest is kept as written.
    }
    if (link === null) {
      cur = next;
      continue;
    }
    if (++links > 40) return next; // a loop: the engine fails on it too
    pending.unshift(...link.split("/").filter(Boolean));
    if (link.startsWith("/")) cur = "/";
  }
  return cur;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function asList(v: unknown): unknown[] {
  return v === undefined || v === null ? [] : Array.isArray(v) ? v : [v];
}

function nonEmpty(v: unknown): boolean {
  if (v === undefined || v === null || v === false || v === "") return false;
  if (Array.isArray(v)) return v.length > 0;
  if (isRecord(v)) return Object.keys(v).length > 0;
  return true;
}
