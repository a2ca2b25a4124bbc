/**
 * Prints the longest functions and methods of src/ (lines from signature to closing brace):
 * `bun scripts/longest_functions.ts [n]`. A measure for refactors, not a rule.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import * as ts from "typescript";

const n = Number(process.argv[2] ?? 10);
const rows: { lines: number; name: string }[] = [];
const walk = (dir: string): string[] =>
  readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : []));
for (const file of walk("src")) {
  const sf = ts.createSourceFile(file, readFileSync(file, "utf8"), ts.ScriptTarget.Latest, true);
  const visit = (node: ts.Node, owner: string): void => {
    let next = owner;
    if (ts.isClassDeclaration(node) && node.name) next = node.name.text;
    const fn = ts.isFunctionDeclaration(node) || ts.isMethodDeclaration(node) || ts.isConstructorDeclaration(node) ||
      ts.isGetAccessorDeclaration(node) || ts.isArrowFunction(node) || ts.isFunctionExpression(node);
    if (fn && (node as ts.FunctionLikeDeclaration).body) {
      const start = sf.getLineAndCharacterOfPosition(node.getStart(sf)).line;
      const end = sf.getLineAndCharacterOfPosition(node.getEnd()).line;
      const named = (node as ts.FunctionLikeDeclaration).name;
      let name = named ? named.getText(sf) : ts.isConstructorDeclaration(node) ? "constructor" : "";
      if (!name && ts.isVariableDeclaration(node.parent)) name = node.parent.name.getText(sf);
      if (name) rows.push({ lines: end - start + 1, name: `${file}:${start + 1} ${owner ? `${owner}.` : ""}${name}` });
    }
    ts.forEachChild(node, (c) => visit(c, next));
  };
  visit(sf, "");
}
rows.sort((a, b) => b.lines - a.lines);
for (const r of rows.slice(0, n)) console.log(`${String(r.lines).padStart(4)}  ${r.name}`);
