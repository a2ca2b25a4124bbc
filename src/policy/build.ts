/**
 * Rules on building images: the build reads only the checkout, runs with no more network or
 * privilege than a container, and names its image inside the project.
 */
import { isAbsolute, resolve as resolvePath } from "node:path";
import type { Rule, Walk } from "./context.ts";
import { isRecord } from "../json.ts";
import { asList, nonEmpty, text } from "./context.ts";

export const BUILD_RULES: readonly Rule[] = [
  { rule: "build_context", key: "build.context", reason: "a build context outside the checkout (a host directory or a remote URL) sends the host's files to the build" },
  { rule: "build_dockerfile", key: "build.dockerfile", reason: "a Dockerfile outside the checkout is a host file read by the build" },
  { rule: "build_network", key: "build.network", reason: "a build on the host's or another network reaches what the containers may not; only default and none are allowed" },
  { rule: "build_privileged", key: "build.privileged|build.entitlements|build.isolation", reason: "privileged builds and entitlements run build steps with the host's privileges" },
  { rule: "build_ssh", key: "build.ssh", reason: "ssh forwards pgod's SSH agent or a host key file into the build" },
  { rule: "build_cache", key: "build.cache_from|build.cache_to", reason: "a local build cache reads or writes a host directory; only image references are allowed in cache_from" },
  { rule: "build_contexts", key: "build.additional_contexts", reason: "additional contexts name host directories or other images the build may read" },
  { rule: "build_image", key: "build.tags|image", reason: "a built image may carry only a name of this project (<project>-...), or it replaces another project's image of the same name" },
];

export function checkBuild(w: Walk): void {
  const checkout = (p: string): boolean => w.inCheckout(w.resolve(p));
  for (const { name: svc, def } of w.services) {
    const b = def["build"];
    if (b === undefined || b === null) continue;
    const build = isRecord(b) ? b : { context: b };
    const ctxPath = typeof build["context"] === "string" ? build["context"] : ".";
    const remote = /^[a-z][a-z0-9+.-]*:\/\//i.test(ctxPath) || /^[^/\s]+@[^/\s]+:/.test(ctxPath);
    const context = remote ? null : resolvePath(w.ctx.repoDir, ctxPath);
    if (context === null || !checkout(context)) w.add(svc, "build.context", "build_context", ctxPath);
    const df = build["dockerfile"];
    if (typeof df === "string" && context !== null) {
      const full = isAbsolute(df) ? df : resolvePath(context, df);
      if (!checkout(full)) w.add(svc, "build.dockerfile", "build_dockerfile", df);
    }
    const net = build["network"];
    if (nonEmpty(net) && !["default", "none"].includes(text(net))) w.add(svc, "build.network", "build_network", net);
    for (const key of ["privileged", "entitlements", "isolation"]) {
      if (nonEmpty(build[key])) w.add(svc, `build.${key}`, "build_privileged", build[key]);
    }
    if (nonEmpty(build["ssh"])) w.add(svc, "build.ssh", "build_ssh", build["ssh"]);
    if (nonEmpty(build["cache_to"])) w.add(svc, "build.cache_to", "build_cache", build["cache_to"]);
    for (const c of asList(build["cache_from"])) {
      const s = text(c);
      if (s.includes("=")) w.add(svc, "build.cache_from", "build_cache", s);
    }
    if (nonEmpty(build["additional_contexts"])) w.add(svc, "build.additional_contexts", "build_contexts", build["additional_contexts"]);
    // compose names a built image <project>-<service> unless image: says otherwise.
    if (nonEmpty(build["tags"])) w.add(svc, "build.tags", "build_image", build["tags"]);
    const image = def["image"];
    if (image !== undefined && image !== null) {
      const repo = text(image).replace(/[:@].*$/, "");
      if (!repo.startsWith(`${w.project}-`) && !repo.startsWith(`${w.project}_`) || w.foreign(repo) !== undefined) {
        w.add(svc, "image", "build_image", image);
      }
    }
  }
}
