import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { bearerFrom, loadToken, requireDistinctTokens, tokensEqual } from './token.js';

const TOKEN = 'a3f1c2d4e5f60718293a4b5c6d7e8f90';
let dir: string | undefined;
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('token', () => {
  it('reads the file (trimmed) before the environment, and warns about an open file', async () => {
    dir = await mkdtemp(join(tmpdir(), 'tandem-token-'));
    const file = join(dir, 'ws.token');
    await writeFile(file, `${TOKEN}\n`);
    await chmod(file, 0o644);
    const warnings: string[] = [];
    const logger = { warn: (_o: object, msg: string) => warnings.push(msg) };
    expect(loadToken({ tokenFile: file, logger, environment: { TANDEM_TOKEN: 'other-token-from-the-env' } })).toBe(TOKEN);
    expect(warnings).toEqual(['token file is readable by group or others; chmod 600 it']);
    await chmod(file, 0o600);
    warnings.length = 0;
    loadToken({ tokenFile: file, logger });
    expect(warnings).toEqual([]);
  });

  it('refuses a token file others can write: whoever writes it knows the token', async () => {
    const file = join(dir!, 'read.token');
    await writeFile(file, `${TOKEN}\n`);
    await chmod(file, 0o622);
    expect(() => loadToken({ tokenFile: file, key: 'server.readTokenFile', env: null })).toThrow(
      `token file ${file} (server.readTokenFile): it can be written by group or others (mode 0622); refusing to use it`,
    );
    await chmod(file, 0o600);
    expect(loadToken({ tokenFile: file, key: 'server.readTokenFile', env: null })).toBe(TOKEN);
    // env: null reads no environment variable.
    expect(() => loadToken({ key: 'server.readTokenFile', env: null, environment: { TANDEM_TOKEN: TOKEN } })).toThrow(/no token: set server.readTokenFile in the config$/);
  });

  it('requires every token of an agent to differ, naming the two keys', () => {
    expect(() => requireDistinctTokens([{ key: 'server.tokenFile', token: 'a'.repeat(20) }, { key: 'server.readTokenFile', token: 'b'.repeat(20) }], '/etc/tandem/primary.yml')).not.toThrow();
    expect(() =>
      requireDistinctTokens(
        [
          { key: 'server.tokenFile', token: 'a'.repeat(20) },
          { key: 'server.readTokenFile', token: 'b'.repeat(20) },
          { key: 'standbys[0].tokenFile (standby "web2")', token: 'a'.repeat(20) },
        ],
        '/etc/tandem/primary.yml',
      ),
    ).toThrow('/etc/tandem/primary.yml: server.tokenFile and standbys[0].tokenFile (standby "web2") hold the same token');
  });

  it('falls back to TANDEM_TOKEN and says what is missing', () => {
    expect(loadToken({ environment: { TANDEM_TOKEN: TOKEN } })).toBe(TOKEN);
    expect(() => loadToken({ environment: {} })).toThrow(/no token: set server.tokenFile in the config or TANDEM_TOKEN in the environment/);
    expect(() => loadToken({ key: 'primary.tokenFile', environment: {} })).toThrow(/set primary.tokenFile/);
    expect(() => loadToken({ tokenFile: '/nonexistent/ws.token', environment: {} })).toThrow(/token file \/nonexistent\/ws.token \(server.tokenFile\): no such file/);
    expect(() => loadToken({ environment: { TANDEM_TOKEN: 'short' } })).toThrow(/at least 16/);
    try {
      loadToken({ environment: {} });
    } catch (err) {
      expect((err as { exitCode: number }).exitCode).toBe(2);
    }
  });

  it('compares in constant time and reads the bearer header', () => {
    expect(tokensEqual(TOKEN, TOKEN)).toBe(true);
    expect(tokensEqual(TOKEN, `${TOKEN}x`)).toBe(false);
    expect(tokensEqual(TOKEN, '')).toBe(false);
    expect(bearerFrom({ headers: { authorization: `Bearer ${TOKEN}` } })).toBe(TOKEN);
    expect(bearerFrom({ headers: { authorization: `bearer  ${TOKEN} ` } })).toBe(TOKEN);
    expect(bearerFrom({ headers: { authorization: `Basic ${TOKEN}` } })).toBeNull();
    expect(bearerFrom({ headers: {} })).toBeNull();
  });
});
