import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { removeTempDirs, tempDirSync } from './testing/helpers.js';
import { agentId, agentIdPath, readAgentId } from './agent-id.js';
import { isTandemError } from './errors.js';

afterAll(removeTempDirs);

const dir = () => tempDirSync('tandem-agent-id-');

describe('agent id', () => {
  it('is generated once per state directory, kept 0600, and differs between state directories', () => {
    const a = join(dir(), 'state'); // not there yet: made 0700
    expect(readAgentId(a)).toBeNull();
    const id = agentId(a);
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(agentId(a)).toBe(id);
    expect(readFileSync(agentIdPath(a), 'utf8')).toBe(`${id}\n`);
    expect(statSync(agentIdPath(a)).mode & 0o777).toBe(0o600);
    expect(statSync(a).mode & 0o777).toBe(0o700);
    expect(agentId(dir())).not.toBe(id);
  });

  it('keeps an id written by hand, and refuses one that is not an id', () => {
    const a = dir();
    writeFileSync(agentIdPath(a), 'web2-primary\n');
    expect(agentId(a)).toBe('web2-primary');
    writeFileSync(agentIdPath(a), '../../etc/passwd\n');
    let err: unknown;
    try {
      agentId(a);
    } catch (e) {
      err = e;
    }
    expect(isTandemError(err, 'config')).toBe(true);
    expect((err as Error).message).toContain(`${agentIdPath(a)} holds "../../etc/passwd", not an agent id`);
  });
});
