/**
 * Makes SOPS files for tests, written from SOPS's documented format (the sops CLI is not in
 * Debian): AES-256-GCM values with a 32-byte iv and the key path as additional data, the data
 * key age-encrypted (armored) to the recipients, and the MAC over every value.
 */
import { createHash, randomBytes } from "node:crypto";
import { armor, Encrypter } from "age-encryption";
import { stringify } from "yaml";

type Tree = { [k: string]: Leaf | Tree | (Leaf | Tree)[] };
type Leaf = string | number | boolean;

async function encValue(v: Leaf, key: CryptoKey, aad: string): Promise<string> {
  const type = typeof v === "boolean" ? "bool" : typeof v === "number" ? (Number.isInteger(v) ? "int" : "float") : "str";
  const plain = typeof v === "string" ? v : String(v);
  const iv = randomBytes(32);
  const out = new Uint8Array(await crypto.subtle.encrypt(
    { name: "AES-GCM", iv, additionalData: new TextEncoder().encode(aad), tagLength: 128 }, key, new TextEncoder().encode(plain),
  ));
  const data = Buffer.from(out.subarray(0, out.length - 16)).toString("base64");
  const tag = Buffer.from(out.subarray(out.length - 16)).toString("base64");
  return `ENC[AES256_GCM,data:${data},iv:${iv.toString("base64")},tag:${tag},type:${type}]`;
}

/** A SOPS file of `tree` in `format`, its data key encrypted to `recipients`. */
export async function encryptSops(tree: Tree, format: "yaml" | "json" | "env", recipients: string[], o: { lastModified?: string } = {}): Promise<string> {
  const raw = randomBytes(32);
  const key = await crypto.subtle.importKey("raw", raw, { name: "AES-GCM" }, false, ["encrypt"]);
  const hash = createHash("sha512");
  const walk = async (node: Tree | Leaf | (Leaf | Tree)[], path: string[]): Promise<unknown> => {
    if (Array.isArray(node)) {
      const out = [];
      for (const x of node) out.push(await walk(x, path));
      return out;
    }
    if (typeof node === "object") {
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(node)) out[k] = await walk(v, [...path, k]);
      return out;
    }
    hash.update(typeof node === "string" ? node : String(node), "utf8");
    // SOPS leaves an empty value in clear (it is still in the MAC).
    if (node === "") return "";
    return encValue(node, key, `${path.join(":")}:`);
  };
  const enc = (await walk(tree, [])) as Record<string, unknown>;
  const lastModified = o.lastModified ?? new Date().toISOString().replace(/\.\d+Z$/, "Z");
  const mac = await encValue(hash.digest("hex").toUpperCase(), key, lastModified);
  const ages = [];
  for (const r of recipients) {
    const e = new Encrypter();
    e.addRecipient(r);
    ages.push({ recipient: r, enc: armor.encode(await e.encrypt(raw)) });
  }
  const sops = { age: ages, lastmodified: lastModified, mac, unencrypted_suffix: "_unencrypted", version: "3.9.0" };
  if (format === "json") return JSON.stringify({ ...enc, sops }, null, 2) + "\n";
  if (format === "yaml") return stringify({ ...enc, sops });
  const lines = Object.entries(enc).map(([k, v]) => `${k}=${String(v)}`);
  ages.forEach((a, i) => {
    lines.push(`sops_age__list_${i}__map_enc=${a.enc.replace(/\n/g, "\\n")}`);
    lines.push(`sops_age__list_${i}__map_recipient=${a.recipient}`);
  });
  lines.push(`sops_lastmodified=${lastModified}`, `sops_mac=${mac}`, "sops_unencrypted_suffix=_unencrypted", "sops_version=3.9.0");
  return lines.join("\n") + "\n";
}
