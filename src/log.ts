/** One line per event on stderr with key=value fields; never pass secrets as fields. */

export type Level = "debug" | "info" | "warn" | "error";
export type Fields = Record<string, string | number | boolean | undefined>;

/** The logger every module receives. */
export interface Logger {
  debug(msg: string, fields?: Fields): void;
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
  /** A logger that adds `fields` to every line. */
  with(fields: Fields): Logger;
  readonly debugEnabled: boolean;
}

export interface LoggerOptions {
  debug?: boolean;
  /** Leave out timestamps (journald stamps lines itself). */
  timestamps?: boolean;
  write?: (line: string) => void;
  now?: () => Date;
}

/** Quotes a value when it holds spaces, quotes or is empty. */
export function quoteValue(v: string): string {
  return /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v);
}

/** Makes a logger writing to stderr. */
export function makeLogger(opts: LoggerOptions = {}, base: Fields = {}): Logger {
  const write = opts.write ?? ((line: string) => process.stderr.write(line + "\n"));
  const now = opts.now ?? (() => new Date());
  const debugEnabled = opts.debug ?? false;
  const timestamps = opts.timestamps ?? !process.env["JOURNAL_STREAM"];
  const emit = (level: Level, msg: string, fields?: Fields): void => {
    if (level === "debug" && !debugEnabled) return;
    let line = timestamps ? `${now().toISOString()} ${level} ` : `${level} `;
    line += `msg=${quoteValue(msg)}`;
    for (const [k, v] of Object.entries({ ...base, ...fields })) {
      if (v === undefined) continue;
      line += ` ${k}=${quoteValue(String(v))}`;
    }
    write(line);
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
    with: (f) => makeLogger(opts, { ...base, ...f }),
    debugEnabled,
  };
}

/** A logger that keeps lines in memory, for tests. */
export function memoryLogger(debug = true): Logger & { lines: string[] } {
  const lines: string[] = [];
  const log = makeLogger({ debug, timestamps: false, write: (l) => lines.push(l) });
  return Object.assign(log, { lines });
}
