import { describe, expect, it } from 'vitest';
import { TandemError } from '../errors.js';
import { checkExitCode, checkReportJson, flattenMessage, formatCheckReport, runChecks, verdict, type CheckDef } from './runner.js';

interface Ctx {
  seen: string[];
}

const check = (name: string, run: CheckDef<Ctx>['run'], needs?: string[]): CheckDef<Ctx> => ({ name, needs, run });

describe('check runner', () => {
  it('runs in order, turns a thrown TandemError into a failure with its hint, and skips what needs a failed or inapplicable check', async () => {
    const ctx: Ctx = { seen: [] };
    const results = await runChecks(
      [
        check('config', (c) => {
          c.seen.push('config');
          return '/etc/tandem/primary.yml (site www)';
        }),
        check('postgres', () => {
          throw new TandemError('external', 'DB_CONNECT', 'database postgres://db/www: connection refused', { hint: 'is PostgreSQL running?' });
        }, ['config']),
        check('db-access', (c) => {
          c.seen.push('db-access');
          return 'never';
        }, ['postgres']),
        check('roles', () => 'never', ['db-access']),
        check('pairing', () => verdict.notApplicable('no --identity FILE given'), ['config']),
        check('after-pairing', () => 'never', ['pairing']),
        check('tokens', () => verdict.warn('no control token', 'make one'), ['config']),
      ],
      ctx,
    );
    expect(ctx.seen).toEqual(['config']);
    expect(results).toEqual([
      { name: 'config', status: 'ok', detail: '/etc/tandem/primary.yml (site www)' },
      { name: 'postgres', status: 'fail', detail: 'database postgres://db/www: connection refused', hint: 'is PostgreSQL running?' },
      { name: 'db-access', status: 'skip', detail: 'skipped: the postgres check failed' },
      { name: 'roles', status: 'skip', detail: 'skipped: the postgres check failed' },
      { name: 'pairing', status: 'skip', detail: 'no --identity FILE given' },
      { name: 'after-pairing', status: 'skip', detail: 'skipped: the pairing check does not apply' },
      { name: 'tokens', status: 'warn', detail: 'no control token', hint: 'make one' },
    ]);
    expect(checkExitCode(results)).toBe(1);
    expect(formatCheckReport(results)).toEqual([
      'ok    config         /etc/tandem/primary.yml (site www)',
      'FAIL  postgres       database postgres://db/www: connection refused',
      '                     hint: is PostgreSQL running?',
      'skip  db-access      skipped: the postgres check failed',
      'skip  roles          skipped: the postgres check failed',
      'skip  pairing        no --identity FILE given',
      'skip  after-pairing  skipped: the pairing check does not apply',
      'warn  tokens         no control token',
      '                     hint: make one',
      'CHECK FAILED: 1 ok, 1 warning, 1 failed, 4 skipped',
    ]);
    expect(JSON.parse(checkReportJson(results))).toMatchObject({ ok: false, checks: results });
  });

  it('passes with warnings and skips, reports an unexpected error and a check that hangs as failures', async () => {
    const results = await runChecks(
      [
        check('a', () => verdict.warn('meh')),
        check('b', () => {
          throw new Error('boom');
        }),
        check('c', () => new Promise<string>(() => undefined)),
      ],
      { seen: [] },
      { timeoutMs: 50 },
    );
    expect(results.map((r) => [r.name, r.status, r.detail])).toEqual([
      ['a', 'warn', 'meh'],
      ['b', 'fail', 'unexpected error: boom'],
      ['c', 'fail', 'no answer within 0.05 s'],
    ]);
    expect(checkExitCode(results.slice(0, 1))).toBe(0);
    expect(formatCheckReport(results.slice(0, 1)).at(-1)).toBe('check passed: 0 ok, 1 warning, 0 failed, 0 skipped');
  });

  it('leaves out a check whose `when` is false (asked with what earlier checks found); one that needs it is skipped as not applying', async () => {
    const ctx: Ctx = { seen: [] };
    const results = await runChecks(
      [
        check('config', (c) => {
          c.seen.push('dump');
          return 'ok';
        }),
        { name: 'wal-settings', needs: ['config'], when: (c: Ctx) => c.seen.includes('wal'), run: () => 'never' },
        { name: 'dump-only', needs: ['config'], when: (c: Ctx) => c.seen.includes('dump'), run: () => 'ran' },
        check('after-wal', () => 'never', ['wal-settings']),
      ],
      ctx,
    );
    expect(results.map((r) => [r.name, r.status, r.detail])).toEqual([
      ['config', 'ok', 'ok'],
      ['dump-only', 'ok', 'ran'],
      ['after-wal', 'skip', 'skipped: the wal-settings check does not apply'],
    ]);
  });

  it('puts a multi-line message on one line', () => {
    expect(flattenMessage('/etc/p.yml: 2 problems:\n  - site: expected a site name\n  - keys.signingKeyFile: required')).toBe(
      '/etc/p.yml: 2 problems: site: expected a site name; keys.signingKeyFile: required',
    );
    expect(flattenMessage('one line')).toBe('one line');
  });
});
