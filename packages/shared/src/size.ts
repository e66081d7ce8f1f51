/**
 * Sizes as people read them, the same unit everywhere a size is shown to a person (command output,
 * the human log format, progress): binary units, one decimal ("6.6 KiB", "1.2 GiB", "512 B").
 * Machine output (--json, JSON logs, /status, metrics) keeps raw byte numbers.
 */
const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'] as const;

export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes)) return `${bytes} B`;
  const sign = bytes < 0 ? '-' : '';
  let n = Math.abs(bytes);
  let i = 0;
  // Round first, so that 1023.96 KiB reads "1.0 MiB", not "1024.0 KiB".
  while (i < UNITS.length - 1 && (i === 0 ? n >= 1024 : Math.round(n * 10) / 10 >= 1024)) {
    n /= 1024;
    i++;
  }
  return i === 0 ? `${sign}${Math.round(n)} B` : `${sign}${n.toFixed(1)} ${UNITS[i]}`;
}

/** A transfer rate: "12.3 MiB/s". */
export const formatRate = (bytesPerSecond: number): string => `${formatBytes(bytesPerSecond)}/s`;
