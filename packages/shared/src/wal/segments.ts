/**
 * WAL segment names and sizes, as PostgreSQL spells them: 24 hex digits, the timeline, then the
 * segment number in two halves ("log" and "seg"), 0x100000000 / segment size segments per log
 * (256 with the default 16 MiB segments).
 */
const SEGMENT = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})/;
export const DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024;

const perLog = (segmentBytes: number): number => Math.floor(0x1_0000_0000 / segmentBytes);
const hex8 = (n: number): string => n.toString(16).toUpperCase().padStart(8, '0');

/** The segment after `name` on the same timeline (…FF → the next log); null when `name` is no segment name. */
export function nextSegmentName(name: string, segmentBytes = DEFAULT_SEGMENT_BYTES): string | null {
  const m = /^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$/.exec(name);
  if (!m) return null;
  let log = parseInt(m[2]!, 16);
  let seg = parseInt(m[3]!, 16) + 1;
  if (seg >= perLog(segmentBytes)) {
    seg = 0;
    log += 1;
  }
  return `${m[1]}${hex8(log)}${hex8(seg)}`;
}

/** Segments from `a` to `b` on one timeline (b − a; names may carry a suffix such as .partial); null across timelines. */
export function segmentDistance(a: string, b: string, segmentBytes = DEFAULT_SEGMENT_BYTES): number | null {
  const x = SEGMENT.exec(a);
  const y = SEGMENT.exec(b);
  if (!x || !y || x[1] !== y[1]) return null;
  const no = (m: RegExpExecArray) => parseInt(m[2]!, 16) * perLog(segmentBytes) + parseInt(m[3]!, 16);
  return no(y) - no(x);
}

/** current_setting('wal_segment_size') ("16MB", or bytes) in bytes; the default when unreadable. */
export function parseSegmentSize(setting: string): number {
  const m = /^(\d+)\s*(kB|MB|GB)?$/.exec(setting.trim());
  if (!m) return DEFAULT_SEGMENT_BYTES;
  const unit = m[2] === 'kB' ? 1024 : m[2] === 'MB' ? 1024 * 1024 : m[2] === 'GB' ? 1024 * 1024 * 1024 : 1;
  return Number(m[1]) * unit;
}
