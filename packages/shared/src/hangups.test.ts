import { describe, expect, it } from 'vitest';
import { holdHangupsUntilServing } from './interrupts.js';

describe('holdHangupsUntilServing', () => {
  it('a SIGHUP before the daemon serves is logged, not fatal; once it serves, only its own handler speaks', async () => {
    const lines: string[] = [];
    const logger = { info: (_o: unknown, msg: string) => lines.push(msg) } as unknown as Parameters<typeof holdHangupsUntilServing>[0];
    const before = process.listenerCount('SIGHUP');
    const release = holdHangupsUntilServing(logger);
    try {
      // Without the handler, Node's default for SIGHUP would end this (test) process here.
      process.kill(process.pid, 'SIGHUP');
      await new Promise((r) => setTimeout(r, 100));
      expect(lines).toEqual(['SIGHUP before the daemon serves: nothing to reload yet (the TLS files are read as it starts)']);
      const served: string[] = [];
      const daemonHandler = () => served.push('reload');
      process.on('SIGHUP', daemonHandler);
      process.kill(process.pid, 'SIGHUP');
      await new Promise((r) => setTimeout(r, 100));
      process.off('SIGHUP', daemonHandler);
      expect(served).toEqual(['reload']);
      expect(lines).toHaveLength(1);
    } finally {
      release();
    }
    expect(process.listenerCount('SIGHUP')).toBe(before);
  });
});
