import { describe, expect, it } from 'vitest';
import { restrictedSql } from './schema.js';

async function collect(pieces: string[]): Promise<string> {
  const out: Buffer[] = [];
  for await (const b of restrictedSql((async function* () { yield* pieces; })(), 'pg_restore of set X')) out.push(b);
  return Buffer.concat(out).toString();
}

/** The SQL a schema apply feeds to psql must be pg_restore's guarded output (its \restrict line first). */
describe('restrictedSql', () => {
  const guarded = '--\n-- PostgreSQL database dump\n--\n\n\\restrict 1xHPHjJRcQ\n\nSET statement_timeout = 0;\nCREATE TABLE s.t (id int);\n\\unrestrict 1xHPHjJRcQ\n';

  it('passes guarded output on unchanged, whatever the pieces it arrives in', async () => {
    expect(await collect([guarded])).toBe(guarded);
    expect(await collect(guarded.match(/.{1,3}/gs)!)).toBe(guarded);
  });

  it('refuses output without the guard before psql sees a byte of it', async () => {
    const old = '--\n-- PostgreSQL database dump\n--\n\nSET statement_timeout = 0;\n\\! touch /tmp/pwned\n';
    await expect(collect([old])).rejects.toThrow(/does not guard its SQL output against psql meta-commands/);
    // A crafted name cannot pass for the guard later on, nor an empty key.
    await expect(collect(['CREATE TABLE x();\n\\restrict abc\n'])).rejects.toThrow(/no \\restrict line/);
    await expect(collect(['\\restrict \n'])).rejects.toThrow(/no \\restrict line/);
    await expect(collect(['-- only a comment, and the end'])).rejects.toThrow(/no \\restrict line/);
  });
});
