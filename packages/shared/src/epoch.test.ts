import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { assertNotFenced, raiseEpoch, readEpoch, readOrCreateEpoch } from './epoch.js';
import { TandemError, isTandemError } from './errors.js';
import { openFilestore } from './filestore/open.js';

const store = () => openFilestore(`file://${mkdtempSync(join(tmpdir(), 'tandem-epoch-'))}`);

describe('epoch.json', () => {
  it('is created once, as epoch 1 naming the first primary', async () => {
    const fs = store();
    const a = await readOrCreateEpoch(fs, 'demo', 'web1');
    const b = await readOrCreateEpoch(fs, 'demo', 'web2');
    expect(a).toMatchObject({ created: true, doc: { epoch: 1, primaryHost: 'web1' } });
    expect(b).toMatchObject({ created: false, doc: { epoch: 1, primaryHost: 'web1' } });
  });

  it('lets exactly one of several racing promotes win, and tells the losers who won', async () => {
    const fs = store();
    await readOrCreateEpoch(fs, 'demo', 'web1');
    const racers = ['sb1', 'sb2', 'sb3', 'sb4'].map((host) => raiseEpoch(fs, 'demo', host, 'promote'));
    const results = await Promise.allSettled(racers);
    const winners = results.filter((r) => r.status === 'fulfilled');
    expect(winners).toHaveLength(1);
    const current = (await readEpoch(fs, 'demo'))!.doc;
    expect(current.epoch).toBe(2);
    expect(current.previous).toEqual({ epoch: 1, primaryHost: 'web1' });
    expect(current.primaryHost).toBe((winners[0] as PromiseFulfilledResult<{ primaryHost: string }>).value.primaryHost);
    for (const r of results) {
      if (r.status === 'rejected') {
        expect(isTandemError(r.reason, 'precondition')).toBe(true);
        expect((r.reason as TandemError).message).toContain(`${current.primaryHost} is primary in epoch 2`);
      }
    }
  });

  it('fences a primary once another server holds a higher or the same epoch', () => {
    const doc = { format: 'tandem-epoch' as const, version: 1 as const, epoch: 3, primaryHost: 'sb1', since: '2026-11-22T03:00:00Z', reason: 'promote' };
    expect(() => assertNotFenced(doc, { epoch: 3, host: 'sb1' }, 'demo')).not.toThrow();
    const err = (() => {
      try {
        assertNotFenced(doc, { epoch: 2, host: 'web1' }, 'demo');
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
    expect(() => assertNotFenced(doc, { epoch: 3, host: 'web1' }, 'demo')).toThrow(/fenced/);
  });
});
