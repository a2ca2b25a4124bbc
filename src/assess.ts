/**
 * The policy verdict on a service's compose tree (DECISIONS.md #2): in the checkout, or for a
 * commit not checked out yet in a stage worktree beside it.
 */
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { composeModel } from "./compose_model.ts";
import { errorMessage, SecretError } from "./errors.ts";
import { evaluatePolicy, formatViolations } from "./policy.ts";
import { privateDir } from "./service.ts";
import type { Assessment, Scope, Turn } from "./service.ts";
import { isRoot } from "./users.ts";
import type { Account } from "./users.ts";
import { locateFindings } from "./verdict.ts";
import type { Workspace } from "./workspace.ts";
import { pullsImages, screenComposeTree } from "./yaml_screen.ts";

/** Evaluates `commit` in a worktree beside the checkout (same depth, so relative symlinks resolve alike). */
export async function evaluateCommit(s: Scope, ws: Workspace, t: Turn, commit: string): Promise<Assessment> {
  const stage = join(s.d.dir, `.stage-${s.svc.name}`);
  await rm(stage, { recursive: true, force: true });
  await privateDir(stage, t.a);
  try {
    await t.git.addWorktree(s.checkout, stage, commit);
    return await assessTree(s, ws, t.a, stage);
  } finally {
    await t.git.removeWorktree(s.checkout, stage).catch(() => {});
    await rm(stage, { recursive: true, force: true });
  }
}

/**
 * The policy verdict on the compose files in `dir`: null when they may be deployed, else why
 * not; and whether `docker compose pull` would have anything to do. Every file is screened (size,
 * aliases, symlinks out of the repository) before docker compose reads it; for a service that
 * does not run as root the model docker compose resolves is then checked against the sandbox rules.
 */
export async function assessTree(s: Scope, ws: Workspace, a: Account, dir: string): Promise<Assessment> {
  const { svc, d } = s;
  // Encrypted files become plain ones before compose reads anything, in the tree judged.
  try {
    await ws.decryptInto(a, dir);
  } catch (e) {
    if (e instanceof SecretError) return { why: e.message, pulls: true };
    throw e;
  }
  const file = ws.findComposeFile(dir);
  if (file === null) return { why: `Cannot find a compose file: looked for ${ws.lookedFor()}`, pulls: true };
  const root = isRoot(a);
  // Asked outside the verdict: an engine that does not answer fails this cycle, which is
  // retried, instead of refusing the commit for good.
  const existing = !root && d.engineNames ? await d.engineNames() : undefined;
  try {
    if (root) return { why: null, pulls: (await screenComposeTree(dir, file)).pulls };
    const model = await composeModel(d.runner, {
      project: svc.name, dir, file, account: a, env: svc.env, dockerConfig: ws.dockerConfig,
    }, d.composeCgroup ? { cgroupDir: d.composeCgroup } : {});
    const v = evaluatePolicy(model, {
      project: svc.name, repoDir: dir, dataDir: ws.dataDir,
      ...(svc.networks ? { networks: svc.networks } : {}),
      ...(svc.checkoutBinds ? { checkoutBinds: svc.checkoutBinds } : {}),
      ...(svc.loggingDrivers ? { loggingDrivers: svc.loggingDrivers } : {}),
      ...(d.projects ? { projects: d.projects } : {}),
      ...(existing ? { existing } : {}),
    });
    if (v.length === 0) return { why: null, pulls: pullsImages(model) };
    const findings = locateFindings(dir, file, v).map((f) => ({
      ...f, reason: ws.redact(f.reason), ...(f.value !== undefined ? { value: ws.redact(f.value) } : {}),
    }));
    return { why: ws.redact(formatViolations(file, v)), pulls: pullsImages(model), findings };
  } catch (e) {
    return { why: ws.redact(errorMessage(e)), pulls: true };
  }
}
