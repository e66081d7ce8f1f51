/**
 * The one status line a command may keep at the bottom of a terminal (progress.ts draws it): log
 * lines and messages are written above it, and it is drawn again below them. Only ever shown when
 * stderr is a terminal.
 */
const CLEAR = '\r\x1b[K';
/** What the status line shows now; '' when there is none. */
let shown = '';

/** Writes `text` (whole lines) to stderr above the status line, which is drawn again below it. */
export function writeAboveStatusLine(text: string): void {
  process.stderr.write(shown === '' ? text : `${CLEAR}${text}${shown}`);
}

/** Removes the status line, if one is shown (before a command's final message). */
export function clearStatusLine(): void {
  if (shown === '') return;
  shown = '';
  process.stderr.write(CLEAR);
}

/** Shows `text` as the status line (cut to the terminal's width), replacing what it showed. */
export function showStatusLine(text: string): void {
  const width = Math.max(20, (process.stderr.columns || 80) - 1);
  const line = text.length > width ? `${text.slice(0, width - 1)}…` : text;
  if (line === shown) return;
  shown = line;
  process.stderr.write(`${CLEAR}${line}`);
}
