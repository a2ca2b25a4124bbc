/** pgoctl(1): the entry point; all logic is in ../pgoctl.ts. */
import { runPgoctl, streamOutput } from "../pgoctl.ts";

const status = await runPgoctl(process.argv.slice(2), {
  stdout: streamOutput(process.stdout),
  stderr: streamOutput(process.stderr),
  env: process.env,
});
process.exit(status);
