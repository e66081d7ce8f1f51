import { describe, expect, it } from 'vitest';
import { OWN_TUNABLES, PRIMARY_OWN_TUNABLES, operatorTunables } from './cli.js';

describe("GLIBC_TUNABLES: the commands' own tuning is not passed on to what they start", () => {
  it('takes off what the first line added, and only that', () => {
    expect(OWN_TUNABLES).toBe('glibc.malloc.hugetlb=1:');
    // Not set by the operator: the first line made it "glibc.malloc.hugetlb=1:".
    expect(operatorTunables('glibc.malloc.hugetlb=1:')).toBeUndefined();
    expect(operatorTunables('glibc.malloc.hugetlb=1:glibc.malloc.arena_max=2')).toBe('glibc.malloc.arena_max=2');
    // Run without the first line (node BIN), the operator's value is left as it is.
    expect(operatorTunables(undefined)).toBeUndefined();
    expect(operatorTunables('glibc.malloc.arena_max=2')).toBe('glibc.malloc.arena_max=2');
    expect(operatorTunables('glibc.malloc.hugetlb=1')).toBe('glibc.malloc.hugetlb=1');
  });

  it("takes off tandem-primary's longer addition (the fixed mmap threshold) whole", () => {
    expect(PRIMARY_OWN_TUNABLES).toBe('glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=1048576:');
    expect(operatorTunables(PRIMARY_OWN_TUNABLES)).toBeUndefined();
    expect(operatorTunables(`${PRIMARY_OWN_TUNABLES}glibc.malloc.arena_max=2`)).toBe('glibc.malloc.arena_max=2');
    // The operator's own threshold after the standby's addition stays theirs.
    expect(operatorTunables('glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=65536')).toBe('glibc.malloc.mmap_threshold=65536');
  });
});
