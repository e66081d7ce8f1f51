/**
 * The primary CLI's argument handling, run as the built CLI: --help (and `help`, `-h`) for every
 * command, exit 0 with nothing on stderr; usage errors (no command, an unknown command or flag, a
 * missing --config) exit 2 and point at --help.
 *
 * Needs: `npm run build` first (the CLI runs from packages/primary-agent/dist/bundle).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { requireBuilt, runPrimary } from './support/site.js';
import { expectOneErrorLine } from './support/primary-site.js';

beforeAll(() => {
  requireBuilt();
});

describe('--help', () => {
  it.each([
    [['--help'], ['init', 'backup', 'list']],
    [['help'], ['init', 'backup', 'list']],
    [['init', '--help'], ['Usage: tandem-primary init', '--keys-dir', '--force']],
    [['backup', '--help'], ['Usage: tandem-primary backup', '--config', '--json']],
    [['list', '--help'], ['Usage: tandem-primary list', '--config', '--json']],
    [['backup', '-h'], ['Usage: tandem-primary backup']],
  ])('tandem-primary %j prints help and exits 0', async (args, wants) => {
    const r = await runPrimary(args);
    expect(r.code).toBe(0);
    for (const w of wants) expect(r.stdout).toContain(w);
    expect(r.stderr).toBe('');
  });

  it('usage errors exit 2 and point at --help', async () => {
    const none = await runPrimary([]);
    expect(none.code).toBe(2);
    expect(none.stdout).toContain('Usage: tandem-primary <command>');
    const unknown = await runPrimary(['bakcup']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown command "bakcup"/);
    const noConfig = await runPrimary(['backup']);
    expect(noConfig.code).toBe(2);
    expectOneErrorLine(noConfig, /--config is required/);
    const badFlag = await runPrimary(['backup', '--confg', 'x']);
    expect(badFlag.code).toBe(2);
    expect(badFlag.stderr).toMatch(/confg/);
  });
});
