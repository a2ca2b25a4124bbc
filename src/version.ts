/** The version, baked in by scripts/build.sh (`--define PGO_VERSION=...`). */
declare const PGO_VERSION: string | undefined;

export const VERSION: string = typeof PGO_VERSION === "string" ? PGO_VERSION : "dev";
