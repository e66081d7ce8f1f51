import { describe, expect, it } from 'vitest';
import { nextSegmentName, parseSegmentSize, segmentDistance } from './segments.js';

describe('WAL segment names', () => {
  it('counts on within a log and into the next log', () => {
    expect(nextSegmentName('000000010000000000000003')).toBe('000000010000000000000004');
    expect(nextSegmentName('0000000100000000000000FF')).toBe('000000010000000100000000');
    expect(nextSegmentName('00000002000000010000003F', 64 * 1024 * 1024)).toBe('000000020000000200000000');
    expect(nextSegmentName('00000002.history')).toBeNull();
  });

  it('measures distances on one timeline only', () => {
    expect(segmentDistance('0000000100000000000000FE', '000000010000000100000001')).toBe(3);
    expect(segmentDistance('000000010000000000000005.partial', '000000010000000000000005')).toBe(0);
    expect(segmentDistance('000000010000000000000005', '000000020000000000000006')).toBeNull();
  });

  it('reads wal_segment_size as PostgreSQL shows it', () => {
    expect(parseSegmentSize('16MB')).toBe(16 * 1024 * 1024);
    expect(parseSegmentSize('1GB')).toBe(1024 * 1024 * 1024);
    expect(parseSegmentSize('nonsense')).toBe(16 * 1024 * 1024);
  });
});
