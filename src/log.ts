/**
 * Logging: one `key=value` line per event on stdout, readable in `kubectl logs`.
 *
 *     time=2026-11-26T01:02:03.456Z event=write key=test bytes=10
 */

/** Field values of a log line. */
export type Fields = Record<string, string | number | boolean | null | undefined>;

/** Writes one event. */
export type Logger = (event: string, fields?: Fields) => void;

/** Formats one event as a line (without the newline). Values with spaces or quotes are quoted. */
export function formatLine(event: string, fields: Fields = {}, now = new Date()): string {
  let line = `time=${now.toISOString()} event=${event}`;
  for (const [name, value] of Object.entries(fields)) {
    if (value === undefined) continue;
    line += ` ${name}=${formatValue(String(value))}`;
  }
  return line;
}

function formatValue(value: string): string {
  return value === "" || /[\s"=\\]/.test(value) ? JSON.stringify(value) : value;
}

/** A logger that writes to `out` (default: stdout). */
export function createLogger(out: { write(line: string): unknown } = process.stdout): Logger {
  return (event, fields) => {
    out.write(formatLine(event, fields) + "\n");
  };
}
