import { describe, expect, it } from 'vitest';
import { agentName } from './agent-name.js';

describe('agentName', () => {
  it('is the configured name when there is one', () => {
    expect(agentName({ hostname: 'web1' }, 'ignored')).toBe('web1');
    expect(agentName({ standbyId: 'sb1' }, 'ignored')).toBe('sb1');
  });

  it('is the host name made into one path segment of at most 63 characters, the same for every agent', () => {
    const long = `${'a'.repeat(60)}.example.org`;
    expect(agentName({}, long)).toBe(long.slice(0, 63));
    expect(agentName({}, long)).toHaveLength(63);
    // The primary and the standby (and so promote) of one machine go by the same name.
    expect(agentName({ hostname: undefined }, long)).toBe(agentName({ standbyId: undefined }, long));
    expect(agentName({}, 'web 1/ü')).toBe('web-1--');
    expect(agentName({}, 'web1.example.org')).toBe('web1.example.org');
    expect(agentName({}, '')).toBe('localhost');
  });
});
