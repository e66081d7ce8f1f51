import { describe, expect, it } from 'vitest';
import { TandemError } from '@tandem/shared';
import type { StatusGap } from './gather-status.js';
import { NAGIOS_EXIT, nagiosCheck, nagiosFirstLine, nagiosUnknown } from './nagios.js';
import type { StandbyStatusDoc } from './status-doc.js';

const doc = (o: Partial<StandbyStatusDoc> = {}): StandbyStatusDoc =>
  ({
    recoveryPointAgeSeconds: 11_520,
    applyLagSeconds: 40.2,
    pendingSets: 0,
    primaryHeartbeatAgeSeconds: 12,
    heartbeatNewerSetId: null,
    primaryHeartbeat: null,
    ...o,
  }) as StandbyStatusDoc;
const limits = { warnSeconds: 93_600, critSeconds: 117_000 };
const unreadable: StatusGap = { part: 'filestore', integrity: false, message: 'cannot read the filestore file:///x: the filestore directory /x does not exist' };

describe('the Nagios check', () => {
  it('prints the issue\'s first line for a healthy standby', () => {
    const c = nagiosCheck(doc(), [], limits);
    expect(c.state).toBe('ok');
    expect(nagiosFirstLine(c)).toBe('TANDEM OK - recovery point 3h12m old, 0 pending | rpo=11520s;93600;117000 pending=0 apply_lag=40s heartbeat_age=12s');
    expect(NAGIOS_EXIT[c.state]).toBe(0);
  });

  it('is UNKNOWN when a part could not be read, but a known CRITICAL or WARNING outranks it', () => {
    const u = nagiosCheck(doc({ pendingSets: null }), [unreadable], limits);
    expect(u.state).toBe('unknown');
    expect(nagiosFirstLine(u)).toBe(
      'TANDEM UNKNOWN - cannot read the filestore file:///x: the filestore directory /x does not exist; recovery point 3h12m old, pending unknown | rpo=11520s;93600;117000 pending=U apply_lag=40s heartbeat_age=12s',
    );
    expect(nagiosCheck(doc({ recoveryPointAgeSeconds: 100_000 }), [unreadable], limits).state).toBe('warning');
    expect(nagiosCheck(doc({ recoveryPointAgeSeconds: 200_000 }), [unreadable], limits).state).toBe('critical');
    expect(nagiosCheck(doc(), [{ ...unreadable, integrity: true, message: 'latest.json fails verification: tampered' }], limits).state).toBe('critical');
    // applied.json unreadable: the recovery point is unknown, not "nothing applied".
    const a = nagiosCheck(doc({ recoveryPointAgeSeconds: null }), [{ part: 'applied', integrity: false, message: 'cannot read applied.json' }], limits);
    expect(a.state).toBe('unknown');
    expect(a.perfdata.startsWith('rpo=U;93600;117000 ')).toBe(true);
    expect(nagiosCheck(doc({ recoveryPointAgeSeconds: null }), [], limits)).toMatchObject({ state: 'critical', reasons: ['no set applied: a failover now would lose everything'] });
  });

  it('keeps the first line one line without a "|" of its own, and reports errors as UNKNOWN', () => {
    const c = nagiosCheck(doc(), [{ ...unreadable, message: 'cannot read the filestore s3://b/p: a|b\n  c' }], limits);
    expect(c.text).toBe('cannot read the filestore s3://b/p: a/b c; recovery point 3h12m old, 0 pending');
    expect(nagiosUnknown(new TandemError('config', 'USAGE', 'bad | option\nhere', { hint: 'see --help' }))).toEqual(['TANDEM UNKNOWN - bad / option here', 'hint: see --help']);
    const stopped = nagiosCheck(doc({ primaryHeartbeat: { at: '2026-11-22T03:00:00.000Z', source: 'filestore', primaryHost: 'web1', epoch: 1, lastBackup: null, nextBackupAt: null, state: 'stopped' } }), [], limits);
    expect(stopped.text).toBe('recovery point 3h12m old, 0 pending; primary stopped cleanly at 2026-11-22T03:00:00Z');
  });
});
