/** pgod(8): parses flags and runs the daemon. */
import { runDaemon } from "../daemon.ts";
import { errorMessage, UsageError } from "../errors.ts";
import { parsePgodFlags, pgodUsage } from "../flags.ts";
import { makeLogger } from "../log.ts";
import { VERSION } from "../version.ts";

async function main(argv: string[]): Promise<number> {
  let flags;
  try {
    flags = parsePgodFlags(argv);
  } catch (e) {
    process.stderr.write(`pgod: ${errorMessage(e)}\n${e instanceof UsageError ? "Try \"pgod --help\".\n" : ""}`);
    return 1;
  }
  if (flags.version) {
    process.stdout.write(`pgod ${VERSION}\n`);
    return 0;
  }
  if (flags.help) {
    process.stdout.write(pgodUsage());
    return 0;
  }
  const logger = makeLogger({ debug: flags.debug });
  return runDaemon(flags, { logger });
}

process.exit(await main(process.argv.slice(2)));
