/** pgoctl(1): the entry point; all logic is in ../pgoctl.ts. */
import { runPgoctl, stdioOutput } from "../pgoctl.ts";

const status = await runPgoctl(process.argv.slice(2), {
  stdout: stdioOutput(1),
  stderr: stdioOutput(2),
  env: process.env,
});
process.exit(status);
