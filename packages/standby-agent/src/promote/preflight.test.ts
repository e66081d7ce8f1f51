import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { layout, openFilestore, signHeartbeat, type Heartbeat } from '@tandem/shared';
import { checkPrimarySilent } from './preflight.js';

/**
 * The promote preflight's "primary is silent" check against a signed heartbeat.json in a real
 * directory filestore: a "stopped" heartbeat (a clean shutdown) counts at once, unless a newer
 * running one was seen or it predates a set committed since.
 */
const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const SITE = 'demo';
const set = (seq: number) => ({
  setId: `20261122T030000Z-e1-${String(seq).padStart(6, '0')}`,
  epoch: 1,
  seq,
  createdAt: '2026-11-22T03:00:00.000Z',
  committedAt: '2026-11-22T03:00:40.000Z',
});
const STALE_AFTER = 10 * 60_000;

/** The filestores' temp dirs, removed at the end. */
const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function storeWith(hb: Partial<Heartbeat>) {
  const dir = mkdtempSync(join(tmpdir(), 'tandem-preflight-'));
  dirs.push(dir);
  const fs = openFilestore(`file://${dir}`);
  const doc: Heartbeat = {
    format: 'tandem-heartbeat',
    version: 1,
    site: SITE,
    epoch: 1,
    primaryHost: 'web1',
    at: new Date(Date.now() - 5_000).toISOString(),
    lastBackup: null,
    nextBackupAt: null,
    latest: set(42),
    ...hb,
  };
  await fs.putBuffer(layout.heartbeat(SITE), signHeartbeat(doc, privateKey));
  return { fs, doc };
}

describe('promote preflight: a stopped heartbeat', () => {
  it('passes at once when it names the newest set, though it is only seconds old', async () => {
    const { fs, doc } = await storeWith({ state: 'stopped' });
    const c = await checkPrimarySilent(fs, SITE, publicKey, STALE_AFTER, new Date(), { newest: set(42) });
    expect(c.ok, c.detail).toBe(true);
    expect(c.detail).toMatch(new RegExp(`^the primary stopped cleanly at ${doc.at} \\(\\d+s ago; its daemon's last heartbeat, signed, from web1, epoch 1\\), and names the newest set$`));
  });

  it('a running heartbeat just as old is fresh: refused', async () => {
    const { fs } = await storeWith({ state: 'running' });
    const c = await checkPrimarySilent(fs, SITE, publicKey, STALE_AFTER, new Date(), { newest: set(42) });
    expect(c.ok).toBe(false);
    expect(c.detail).toMatch(/^the primary's heartbeat is fresh/);
    // One from a primary that predates the state member reads as running.
    const { fs: old } = await storeWith({});
    expect((await checkPrimarySilent(old, SITE, publicKey, STALE_AFTER, new Date(), { newest: set(42) })).ok).toBe(false);
  });

  it('is not the last word when the standby daemon saw a newer running heartbeat on the push channel', async () => {
    const { fs } = await storeWith({ state: 'stopped', at: new Date(Date.now() - 20_000).toISOString() });
    const pushed = { at: new Date(Date.now() - 2_000).toISOString(), source: 'push' as const, primaryHost: 'web1', epoch: 1, lastBackup: null, nextBackupAt: null };
    const c = await checkPrimarySilent(fs, SITE, publicKey, STALE_AFTER, new Date(), { newest: set(42), pushed });
    expect(c.ok).toBe(false);
    expect(c.detail).toMatch(/^the primary's heartbeat is fresh: \d+s old \(as the standby daemon last saw it, from web1\)/);
  });

  it('is unknown when a set was committed after it (the primary went on, or it was put back)', async () => {
    const { fs } = await storeWith({ state: 'stopped' });
    const c = await checkPrimarySilent(fs, SITE, publicKey, STALE_AFTER, new Date(), { newest: set(43) });
    expect(c.ok).toBe(false);
    expect(c.detail).toContain('unknown whether the primary is alive: its heartbeat says it stopped cleanly at');
    expect(c.detail).toContain(`names set ${set(42).setId} as the newest, while set ${set(43).setId} was committed since`);
  });
});
