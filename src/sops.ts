/**
 * A small SOPS decryptor for files encrypted to age recipients: dotenv, YAML and JSON stores.
 * Follows SOPS's documented format: each value `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]` is
 * AES-256-GCM under the file's data key with the value's key path (`a:b:`) as additional data;
 * the data key is an age file in `sops.age[].enc`; `sops.mac` is the SHA-512 (upper-case hex) of
 * every value in order, encrypted with `sops.lastmodified` as additional data. WebCrypto only.
 */
import { createHash } from "node:crypto";
import type { Document, Scalar } from "yaml";
import { isMap, isScalar, isSeq, parseDocument, visit, YAMLMap, YAMLSeq } from "yaml";
import { SecretError } from "./errors.ts";
import { isRecord } from "./json.ts";

const SOPS_NAME = /^(.+)\.sops\.(env|ya?ml|json)$/;

/** Whether a file name is a SOPS file pgod decrypts (`x.sops.env|yaml|yml|json`). */
export function isSopsName(base: string): boolean {
  return SOPS_NAME.test(base);
}

/** `x.sops.env` → `x.env`. */
export function plainSopsName(base: string): string {
  const m = base.match(SOPS_NAME);
  return m ? `${m[1]}.${m[2]}` : base;
}

const ENC = /^ENC\[AES256_GCM,data:([A-Za-z0-9+/=]*),iv:([A-Za-z0-9+/=]+),tag:([A-Za-z0-9+/=]+),type:(str|int|float|bool|bytes|comment)\]$/;

type Value = string | number | boolean | null;

/** Decrypts one `ENC[…]` value; returns its plain text and type. */
async function decryptValue(enc: string, key: CryptoKey, aad: string, rel: string): Promise<{ text: string; type: string }> {
  const m = enc.match(ENC);
  if (!m) throw new SecretError(rel, `Cannot decrypt "${rel}": a value is not in SOPS's ENC[AES256_GCM,…] form`);
  const data = Buffer.from(m[1]!, "base64");
  const iv = Buffer.from(m[2]!, "base64");
  const tag = Buffer.from(m[3]!, "base64");
  if (tag.length !== 16 || iv.length === 0) throw new SecretError(rel, `Cannot decrypt "${rel}": a value has a bad iv or tag`);
  try {
    const plain = await crypto.subtle.decrypt(
      { name: "AES-GCM", iv, additionalData: new TextEncoder().encode(aad), tagLength: 128 },
      key,
      Buffer.concat([data, tag]),
    );
    return { text: new TextDecoder().decode(plain), type: m[4]! };
  } catch (e) {
    throw new SecretError(rel, `Cannot decrypt "${rel}": the value at "${aad.slice(0, -1) || "(mac)"}" fails authentication`, { cause: e });
  }
}

function typed(text: string, type: string): Value {
  switch (type) {
    case "int":
    case "float":
      return Number(text);
    case "bool":
      return text.toLowerCase() === "true";
    default:
      return text;
  }
}

/** The bytes SOPS hashes for a value (Go's strconv formatting). */
function macBytes(v: Value): string {
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v === "number") return Number.isInteger(v) ? v.toFixed(0) : String(v);
  if (v === null) return "";
  return v;
}

interface Metadata {
  ageEncs: string[];
  lastModified: string;
  mac: string;
  macOnlyEncrypted: boolean;
}

/** The result of decryptSops: the plain file's text and the values (for redaction). */
export interface SopsPlain {
  text: string;
  values: string[];
}

/**
 * Decrypts a SOPS file (format from its name) whose data key is encrypted to one of the
 * identities behind `ageDecrypt`. Checks the MAC; throws a SecretError naming `rel`.
 */
export async function decryptSops(
  text: string,
  rel: string,
  ageDecrypt: (enc: Uint8Array) => Promise<Uint8Array>,
): Promise<SopsPlain> {
  const fmt = rel.match(SOPS_NAME)?.[2] ?? "yaml";
  return fmt === "env" ? decryptDotenv(text, rel, ageDecrypt) : decryptTreeDoc(text, rel, fmt === "json", ageDecrypt);
}

async function dataKey(meta: Metadata, rel: string, ageDecrypt: (enc: Uint8Array) => Promise<Uint8Array>): Promise<CryptoKey> {
  if (meta.ageEncs.length === 0) throw new SecretError(rel, `Cannot decrypt "${rel}": it has no age recipient in its sops metadata`);
  let last: unknown = null;
  for (const enc of meta.ageEncs) {
    try {
      const raw = await ageDecrypt(new TextEncoder().encode(enc));
      if (raw.length !== 32) throw new SecretError(rel, `Cannot decrypt "${rel}": its data key is not 32 bytes`);
      return await crypto.subtle.importKey("raw", raw, { name: "AES-GCM" }, false, ["decrypt"]);
    } catch (e) {
      last = e;
    }
  }
  if (last instanceof SecretError) throw last;
  throw new SecretError(rel, `Cannot decrypt "${rel}": its data key is not encrypted to this service's key`, { cause: last });
}

async function checkMac(meta: Metadata, key: CryptoKey, hashed: string[], rel: string): Promise<void> {
  if (meta.mac === "") throw new SecretError(rel, `Cannot decrypt "${rel}": it has no sops mac`);
  const want = (await decryptValue(meta.mac, key, meta.lastModified, rel)).text;
  const h = createHash("sha512");
  for (const b of hashed) h.update(b, "utf8");
  const got = h.digest("hex").toUpperCase();
  if (got !== want.toUpperCase()) throw new SecretError(rel, `Cannot decrypt "${rel}": its MAC does not match its content (the file was altered)`);
}

// --- YAML and JSON ----------------------------------------------------------------------------

async function decryptTreeDoc(
  text: string,
  rel: string,
  json: boolean,
  ageDecrypt: (enc: Uint8Array) => Promise<Uint8Array>,
): Promise<SopsPlain> {
  let doc: Document.Parsed;
  try {
    doc = parseDocument(text, { uniqueKeys: true });
  } catch (e) {
    throw new SecretError(rel, `Cannot decrypt "${rel}": it is not valid ${json ? "JSON" : "YAML"}`, { cause: e });
  }
  // SOPS writes no aliases; refusing them means nothing below ever expands one (no alias bombs).
  let alias = false;
  visit(doc, { Alias: () => { alias = true; return visit.BREAK; } });
  if (alias) throw new SecretError(rel, `Cannot decrypt "${rel}": it uses YAML aliases`);
  if (doc.errors.length > 0 || !isMap(doc.contents)) {
    throw new SecretError(rel, `Cannot decrypt "${rel}": it is not a valid SOPS ${json ? "JSON" : "YAML"} file`);
  }
  const root = doc.contents;
  const sopsPair = root.items.find((p) => isScalar(p.key) && p.key.value === "sops");
  if (!sopsPair || !isMap(sopsPair.value)) throw new SecretError(rel, `Cannot decrypt "${rel}": it has no sops metadata`);
  const metadata: unknown = sopsPair.value.toJSON();
  const m: Record<string, unknown> = isRecord(metadata) ? metadata : {};
  const ages = Array.isArray(m["age"]) ? m["age"] : [];
  const meta: Metadata = {
    ageEncs: ages.map((a: unknown) => (isRecord(a) ? a["enc"] : undefined)).filter((e): e is string => typeof e === "string"),
    lastModified: typeof m["lastmodified"] === "string" ? m["lastmodified"] : "",
    mac: typeof m["mac"] === "string" ? m["mac"] : "",
    macOnlyEncrypted: m["mac_only_encrypted"] === true,
  };
  const key = await dataKey(meta, rel, ageDecrypt);
  root.items = root.items.filter((p) => p !== sopsPair);
  const hashed: string[] = [];
  const values: string[] = [];
  const walk = async (node: unknown, path: string[]): Promise<void> => {
    if (isMap(node)) {
      for (const p of node.items) {
        const k = isScalar(p.key) ? String(p.key.value) : String(p.key);
        if (isScalar(p.value)) p.value = await leaf(p.value, [...path, k]);
        else await walk(p.value, [...path, k]);
      }
    } else if (isSeq(node)) {
      for (let i = 0; i < node.items.length; i++) {
        const item = node.items[i];
        if (isScalar(item)) node.items[i] = await leaf(item, path);
        else await walk(item, path);
      }
    }
  };
  const leaf = async (s: Scalar, path: string[]): Promise<Scalar> => {
    const v = s.value as Value;
    if (typeof v === "string" && v.startsWith("ENC[")) {
      const d = await decryptValue(v, key, `${path.join(":")}:`, rel);
      const out = typed(d.text, d.type);
      if (d.type !== "comment") hashed.push(macBytes(out));
      values.push(d.text);
      s.value = out;
      return s;
    }
    if (!meta.macOnlyEncrypted) hashed.push(macBytes(v));
    return s;
  };
  await walk(root, []);
  await checkMac(meta, key, hashed, rel);
  return { text: json ? toJson(root) + "\n" : doc.toString(), values };
}

/** JSON of a YAML node in document order (JS objects would move integer-like keys first). */
function toJson(node: unknown, indent = ""): string {
  const inner = `${indent}  `;
  if (node instanceof YAMLMap) {
    if (node.items.length === 0) return "{}";
    const parts = node.items.map((p) => `${inner}${JSON.stringify(isScalar(p.key) ? String(p.key.value) : String(p.key))}: ${toJson(p.value, inner)}`);
    return `{\n${parts.join(",\n")}\n${indent}}`;
  }
  if (node instanceof YAMLSeq) {
    if (node.items.length === 0) return "[]";
    return `[\n${node.items.map((i) => `${inner}${toJson(i, inner)}`).join(",\n")}\n${indent}]`;
  }
  if (isScalar(node)) return JSON.stringify(node.value ?? null);
  return "null";
}

// --- dotenv -----------------------------------------------------------------------------------

async function decryptDotenv(
  text: string,
  rel: string,
  ageDecrypt: (enc: Uint8Array) => Promise<Uint8Array>,
): Promise<SopsPlain> {
  const items: { key: string; value: string }[] = [];
  const metaItems = new Map<string, string>();
  for (const raw of text.split("\n")) {
    const line = raw.replace(/\r$/, "");
    // SOPS encrypts comments in place (`#ENC[…,type:comment]`) and leaves them out of the MAC:
    // an encrypted comment is dropped, a plain one kept.
    if (line.trimStart().startsWith("#ENC[")) continue;
    if (line.trim() === "" || line.trimStart().startsWith("#")) {
      items.push({ key: "", value: line });
      continue;
    }
    const eq = line.indexOf("=");
    if (eq <= 0) throw new SecretError(rel, `Cannot decrypt "${rel}": a line is not KEY=VALUE`);
    const key = line.slice(0, eq);
    const value = line.slice(eq + 1).replace(/\\n/g, "\n");
    if (key.startsWith("sops_")) metaItems.set(key.slice(5), value);
    else items.push({ key, value });
  }
  const ageEncs: string[] = [];
  for (const [k, v] of metaItems) if (/^age__list_\d+__map_enc$/.test(k)) ageEncs.push(v);
  const meta: Metadata = {
    ageEncs,
    lastModified: metaItems.get("lastmodified") ?? "",
    mac: metaItems.get("mac") ?? "",
    macOnlyEncrypted: metaItems.get("mac_only_encrypted") === "true",
  };
  const key = await dataKey(meta, rel, ageDecrypt);
  const hashed: string[] = [];
  const values: string[] = [];
  const out: string[] = [];
  for (const it of items) {
    if (it.key === "") {
      out.push(it.value);
      continue;
    }
    let v = it.value;
    if (v.startsWith("ENC[")) {
      v = (await decryptValue(v, key, `${it.key}:`, rel)).text;
      hashed.push(v);
      values.push(v);
    } else if (!meta.macOnlyEncrypted) hashed.push(v);
    out.push(`${it.key}=${v.replace(/\n/g, "\\n")}`);
  }
  await checkMac(meta, key, hashed, rel);
  while (out.length > 0 && out[out.length - 1] === "") out.pop();
  return { text: out.join("\n") + "\n", values };
}
