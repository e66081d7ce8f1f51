import { describe, expect, it } from 'vitest';
import { describeProgress } from './progress.js';
import { formatBytes, formatRate } from './size.js';

describe('formatBytes', () => {
  it('binary units, one decimal, bytes whole', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1023)).toBe('1023 B');
    expect(formatBytes(1024)).toBe('1.0 KiB');
    expect(formatBytes(6758)).toBe('6.6 KiB');
    expect(formatBytes(123256)).toBe('120.4 KiB');
    expect(formatBytes(1024 * 1024 - 1)).toBe('1.0 MiB'); // rounded up into the next unit, never "1024.0 KiB"
    expect(formatBytes(3 * 1024 ** 3)).toBe('3.0 GiB');
    expect(formatRate(1.5 * 1024 ** 2)).toBe('1.5 MiB/s');
  });
});

describe('describeProgress', () => {
  it('bytes, and with a known size the percent and time left; the rate once half a second passed', () => {
    expect(describeProgress({ name: 'db', bytes: 0, total: null, seconds: 0 })).toBe('db 0 B');
    expect(describeProgress({ name: 'files', bytes: 10 * 1024 ** 2, total: 40 * 1024 ** 2, seconds: 2 })).toBe('files 10.0 MiB of 40.0 MiB 25% 5.0 MiB/s ETA 6s');
    expect(describeProgress({ name: 'db', bytes: 2048, total: null, seconds: 1 })).toBe('db 2.0 KiB 2.0 KiB/s');
  });
});
