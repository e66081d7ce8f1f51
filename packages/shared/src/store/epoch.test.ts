import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { removeTempDirs, tempDirSync } from '../testing/helpers.js';
import { FencedError, assertNotFenced, checkFenced, onFencedEnv, raiseEpoch, readEpochDoc, readOrCreateEpoch, requireEpoch } from './epoch.js';
import { TandemError, isTandemError } from '../errors.js';
import { openFilestore } from '../filestore/open.js';

afterAll(removeTempDirs);

const store = () => openFilestore(`file://${tempDirSync('tandem-epoch-')}`);

describe('epoch.json', () => {
  it('is created once, as epoch 1 naming the first primary', async () => {
    const fs = store();
    const a = await readOrCreateEpoch(fs, 'demo', { id: 'agent-1', host: 'web1' });
    const b = await readOrCreateEpoch(fs, 'demo', { id: 'agent-2', host: 'web2' });
    expect(a).toMatchObject({ created: true, doc: { epoch: 1, primaryHost: 'web1', primaryId: 'agent-1' } });
    expect(b).toMatchObject({ created: false, doc: { epoch: 1, primaryHost: 'web1', primaryId: 'agent-1' } });
  });

  it('lets exactly one of several racing promotes win, and tells the losers who won', async () => {
    const fs = store();
    await readOrCreateEpoch(fs, 'demo', { id: 'agent-web1', host: 'web1' });
    const racers = ['sb1', 'sb2', 'sb3', 'sb4'].map((host) => raiseEpoch(fs, 'demo', { id: `agent-${host}`, host }, 'promote'));
    const results = await Promise.allSettled(racers);
    const winners = results.filter((r) => r.status === 'fulfilled');
    expect(winners).toHaveLength(1);
    const current = (await readEpochDoc(fs, 'demo'))!.doc;
    expect(current.epoch).toBe(2);
    expect(current.previous).toEqual({ epoch: 1, primaryHost: 'web1', primaryId: 'agent-web1' });
    expect(current.primaryHost).toBe((winners[0] as PromiseFulfilledResult<{ primaryHost: string }>).value.primaryHost);
    for (const r of results) {
      if (r.status === 'rejected') {
        expect(isTandemError(r.reason, 'precondition')).toBe(true);
        expect((r.reason as TandemError).message).toContain(`${current.primaryHost} is primary in epoch 2`);
      }
    }
  });

  it('fences a primary once another server holds a higher or the same epoch', () => {
    const doc = { format: 'tandem-epoch' as const, version: 1 as const, epoch: 3, primaryHost: 'sb1', primaryId: 'agent-sb1', since: '2026-11-22T03:00:00Z', reason: 'promote' };
    expect(() => assertNotFenced(doc, { epoch: 3, id: 'agent-sb1', host: 'sb1' }, 'demo')).not.toThrow();
    const err = (() => {
      try {
        assertNotFenced(doc, { epoch: 2, id: 'agent-web1', host: 'web1' }, 'demo');
      } catch (e) {
        return e as TandemError;
      }
      throw new Error('not fenced');
    })();
    expect(err.kind).toBe('fenced');
    expect(err.exitCode).toBe(4);
    expect(err.message).toBe(
      'this primary (web1, epoch 2) has been fenced: sb1 became primary of site "demo" in epoch 3 at 2026-11-22T03:00:00Z (promote); no more uploads',
    );
    expect(() => assertNotFenced(doc, { epoch: 3, id: 'agent-web1', host: 'web1' }, 'demo')).toThrow(/fenced/);
  });

  it('fences by agent id: an old primary with the same host name as the new one is fenced all the same', () => {
    // Both agents on one machine, or a standby cloned from the primary's image: one host name.
    const doc = { format: 'tandem-epoch' as const, version: 1 as const, epoch: 2, primaryHost: 'web1', primaryId: 'agent-new', since: '2026-11-22T03:00:00Z', reason: 'promote' };
    expect(() => assertNotFenced(doc, { epoch: 2, id: 'agent-new', host: 'web1' }, 'demo')).not.toThrow();
    for (const epoch of [1, 2]) {
      let err: TandemError | undefined;
      try {
        assertNotFenced(doc, { epoch, id: 'agent-old', host: 'web1' }, 'demo');
      } catch (e) {
        err = e as TandemError;
      }
      expect(err?.kind, `epoch ${epoch}`).toBe('fenced');
      expect(err!.message).toBe(
        `this primary (web1 (agent agent-old), epoch ${epoch}) has been fenced: web1 (agent agent-new) became primary of site "demo" in epoch 2 at 2026-11-22T03:00:00Z (promote); no more uploads`,
      );
      expect(err!.hint).toContain('a copy of its agent-id file, which holds agent-new');
    }
    // A record from before agent ids names a host only: compared by name until a promote writes an id.
    const legacy = { format: 'tandem-epoch' as const, version: 1 as const, epoch: 1, primaryHost: 'web1', since: '2026-11-22T03:00:00Z' };
    expect(() => assertNotFenced(legacy, { epoch: 1, id: 'agent-old', host: 'web1' }, 'demo')).not.toThrow();
    expect(() => assertNotFenced(legacy, { epoch: 1, id: 'agent-old', host: 'web2' }, 'demo')).toThrow(/fenced/);
  });

  it('refuses a raise that would name the agent the record already names, and raises from a record without ids', async () => {
    const fs = store();
    await fs.writeConditional('demo/epoch.json', Buffer.from(JSON.stringify({ format: 'tandem-epoch', version: 1, epoch: 1, primaryHost: 'web1', since: '2026-11-22T03:00:00Z' })), { ifAbsent: true });
    // An older record: the same host name promotes, and the id it writes tells the two apart from now on.
    const raised = await raiseEpoch(fs, 'demo', { id: 'agent-standby', host: 'web1' }, 'promote', { expect: 1 });
    expect(raised).toMatchObject({ epoch: 2, primaryHost: 'web1', primaryId: 'agent-standby', previous: { epoch: 1, primaryHost: 'web1' } });
    // A state directory copied from the primary: the promote would fence nobody.
    const err = await raiseEpoch(fs, 'demo', { id: 'agent-standby', host: 'web1-clone' }, 'promote', { expect: 2 }).then(
      () => null,
      (e: unknown) => e as TandemError,
    );
    expect(err?.code).toBe('PROMOTE_SAME_AGENT');
    expect(err!.kind).toBe('precondition');
    expect(err!.message).toContain('already names agent agent-standby (web1, epoch 2) as the primary, and that is this server\'s own agent id');
    expect((await readEpochDoc(fs, 'demo'))!.doc).toMatchObject({ epoch: 2, primaryId: 'agent-standby' });
  });

  it('decides fencing as a value: not fenced, or why, with the error it makes', () => {
    const doc = { format: 'tandem-epoch' as const, version: 1 as const, epoch: 3, primaryHost: 'sb1', primaryId: 'agent-sb1', since: '2026-11-22T03:00:00Z' };
    expect(checkFenced(null, { epoch: 1, id: 'a', host: 'web1' }, 'demo')).toEqual({ fenced: false });
    expect(checkFenced(doc, { epoch: 4, id: 'a', host: 'web1' }, 'demo')).toEqual({ fenced: false });
    expect(checkFenced(doc, { epoch: 2, id: 'a', host: 'web1' }, 'demo')).toMatchObject({ fenced: true, why: 'higher-epoch', current: doc });
    expect(checkFenced(doc, { epoch: 3, id: 'a', host: 'web1' }, 'demo')).toMatchObject({ fenced: true, why: 'other-agent' });
    let err: unknown;
    try {
      assertNotFenced(doc, { epoch: 2, id: 'a', host: 'web1' }, 'demo');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(FencedError);
    expect(err).toBeInstanceOf(TandemError);
    expect(err).toMatchObject({ kind: 'fenced', code: 'FENCED', exitCode: 4, epoch: 2, filestoreEpoch: 3 });
    expect((err as TandemError).hint).toBe('the site now runs elsewhere: stop this primary; to make this server follow, run `tandem-standby run` here');
  });

  it('names the epoch this primary held and the newer one, or says it never was the primary', () => {
    // Raised twice since this primary held epoch 1: the record no longer names it, its own epoch does.
    const doc = {
      format: 'tandem-epoch' as const,
      version: 1 as const,
      epoch: 3,
      primaryHost: 'web3',
      primaryId: 'agent-web3',
      since: '2026-11-22T03:00:00Z',
      previous: { epoch: 2, primaryHost: 'web2', primaryId: 'agent-web2' },
      reason: 'promote',
    };
    const held = checkFenced(doc, { epoch: 1, id: 'agent-web1', host: 'web1' }, 'demo');
    expect(held).toMatchObject({ fenced: true, why: 'higher-epoch' });
    expect(held.fenced && held.message).toBe('this primary (web1, epoch 1) has been fenced: web3 became primary of site "demo" in epoch 3 at 2026-11-22T03:00:00Z (promote); no more uploads');

    // Never named: a standby's host (its agent id is the standby's), or another state directory.
    const never = checkFenced(doc, { epoch: null, id: 'agent-sb9', host: 'sb9' }, 'demo');
    expect(never).toMatchObject({ fenced: true, why: 'not-primary' });
    let err: unknown;
    try {
      assertNotFenced(doc, { epoch: null, id: 'agent-sb9', host: 'sb9' }, 'demo');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(FencedError);
    expect(err).toMatchObject({ kind: 'fenced', code: 'FENCED', exitCode: 4, epoch: null, filestoreEpoch: 3, neverPrimary: true });
    const msg = (err as FencedError).message;
    expect(msg).toBe(
      'this server is not the site\'s primary: epoch 3 of site "demo" names web3 (agent agent-web3) as the primary (since 2026-11-22T03:00:00Z, promote), ' +
        'and this agent, sb9 (agent agent-sb9), has never been the primary of this site; nothing is uploaded',
    );
    expect(msg).not.toMatch(/has been fenced/);
    expect((err as FencedError).hint).toBe(
      "back up on the primary (web3); if this is the server that was promoted, run tandem-primary with the standby's stateDir (or a copy of its agent-id file, which holds agent-web3)",
    );
    // An agent the record names is the primary, known epoch or not.
    expect(checkFenced(doc, { epoch: null, id: 'agent-web3', host: 'web3' }, 'demo')).toEqual({ fenced: false });
    // A replaced primary's error is not "never primary": onFenced runs for it.
    try {
      assertNotFenced(doc, { epoch: 2, id: 'agent-web2', host: 'web2' }, 'demo');
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ epoch: 2, filestoreEpoch: 3, neverPrimary: false });
  });

  it('builds the onFenced environment the same way for every caller', () => {
    expect(onFencedEnv({ reason: 'fenced', site: 'demo', epoch: 1, filestoreEpoch: 2 })).toEqual({ TANDEM_SITE: 'demo', TANDEM_EPOCH: '1', TANDEM_FILESTORE_EPOCH: '2', TANDEM_REASON: 'fenced' });
    expect(onFencedEnv({ reason: 'fenced', site: 'demo', epoch: null })).toEqual({ TANDEM_SITE: 'demo', TANDEM_EPOCH: '', TANDEM_FILESTORE_EPOCH: '', TANDEM_REASON: 'fenced' });
    expect(onFencedEnv({ reason: 'switchover', site: 'demo', epoch: 1, switchoverId: 'req-0001', standbyId: 'sb1', calledOff: 'x'.repeat(3000) })).toEqual({
      TANDEM_SITE: 'demo',
      TANDEM_EPOCH: '1',
      TANDEM_REASON: 'switchover',
      TANDEM_SWITCHOVER_ID: 'req-0001',
      TANDEM_STANDBY_ID: 'sb1',
      TANDEM_SWITCHOVER_CALLED_OFF: 'x'.repeat(2000),
    });
  });

  it('names a site without a record when its epoch is required', async () => {
    const fs = store();
    const err = await requireEpoch(fs, 'demo').then(
      () => null,
      (e: unknown) => e as TandemError,
    );
    expect(err).toMatchObject({ kind: 'not-found', code: 'EPOCH_MISSING' });
    await readOrCreateEpoch(fs, 'demo', { id: 'a', host: 'web1' });
    expect(await requireEpoch(fs, 'demo')).toBe(1);
  });
});
