import { existsSync } from 'node:fs';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { DirFilestore } from '../filestore/dir-filestore.js';
import type { Filestore } from '../filestore/filestore.js';
import { rejectedWith, removeTempDirs, tempDirSync } from '../testing/helpers.js';
import { MarkerGatedFilestore } from './marker-gate.js';
import { FILESTORE_MARKER_KEY, parseFilestoreMarker, readFilestoreMarker, requireFilestoreMarker, writeFilestoreMarker } from './marker.js';

afterAll(removeTempDirs);

const parent = () => tempDirSync('tandem-marker-');
const urlOf = (dir: string) => pathToFileURL(dir).href;

describe('writeFilestoreMarker', () => {
  it('creates the directory (0700) and the marker; a second call finds it and changes nothing', async () => {
    const root = join(parent(), 'fs');
    const fs = new DirFilestore(root);
    const first = await writeFilestoreMarker(fs, { now: new Date('2026-11-22T03:00:00.000Z') });
    expect(first).toEqual({ created: true, marker: { format: 1, tool: 'tandem', createdAt: '2026-11-22T03:00:00.000Z' } });
    expect((await stat(root)).mode & 0o777).toBe(0o700);
    expect(JSON.parse(await readFile(join(root, FILESTORE_MARKER_KEY), 'utf8'))).toEqual(first.marker);
    const again = await writeFilestoreMarker(fs);
    expect(again).toEqual({ created: false, marker: first.marker });
    expect(await readFilestoreMarker(fs)).toEqual(first.marker);
  });

  it('marks an existing directory (an upgrade: sets already in it) without touching what is there', async () => {
    const root = parent();
    await mkdir(join(root, 'demo'));
    await writeFile(join(root, 'demo', 'latest.json'), '{}');
    expect((await writeFilestoreMarker(new DirFilestore(root))).created).toBe(true);
    expect(await readFile(join(root, 'demo', 'latest.json'), 'utf8')).toBe('{}');
  });

  it('creates only the directory itself: a missing parent is refused and nothing is made', async () => {
    const missing = join(parent(), 'not-mounted');
    const err = await rejectedWith(writeFilestoreMarker(new DirFilestore(join(missing, 'fs'))), { kind: 'permanent', code: 'FILESTORE_PARENT_MISSING' });
    expect(err.message).toContain(missing);
    expect(existsSync(missing)).toBe(false);
  });

  it('never replaces a marker that is not tandem\'s', async () => {
    const root = parent();
    await writeFile(join(root, FILESTORE_MARKER_KEY), '{"tool":"other"}');
    await rejectedWith(writeFilestoreMarker(new DirFilestore(root)), { kind: 'config', code: 'STORE_MARKER_INVALID' });
    expect(await readFile(join(root, FILESTORE_MARKER_KEY), 'utf8')).toBe('{"tool":"other"}');
  });
});

describe('requireFilestoreMarker', () => {
  it('refuses a missing directory, says so and how to create the filestore, and does not create it', async () => {
    const root = join(parent(), 'nope', 'fs');
    const url = urlOf(root);
    const fs = new DirFilestore(root);
    expect(await readFilestoreMarker(fs)).toBeUndefined();
    const err = await rejectedWith(requireFilestoreMarker(fs, { url }), { kind: 'config', code: 'STORE_UNINITIALISED' });
    expect(err.message).toContain(`filestore ${url} is not an initialised tandem filestore`);
    expect(err.message).toContain(`the directory ${root} does not exist`);
    expect(err.hint).toContain('tandem-primary init --filestore --config FILE');
    expect(existsSync(join(root, '..'))).toBe(false);
  });

  it('refuses an empty directory (a mount point not mounted) and one holding other things', async () => {
    const root = parent();
    const empty = await rejectedWith(requireFilestoreMarker(new DirFilestore(root), { url: urlOf(root) }), { code: 'STORE_UNINITIALISED' });
    expect(empty.message).toMatch(/is empty, without tandem-filestore\.json \(a mount point/);
    await writeFile(join(root, 'something'), 'x');
    const full = await rejectedWith(requireFilestoreMarker(new DirFilestore(root), { url: urlOf(root) }), { code: 'STORE_UNINITIALISED' });
    expect(full.message).toContain(`the directory ${root} holds no tandem-filestore.json`);
  });

  it.each([
    ['not JSON', 'tandem', /not valid JSON/],
    ['another tool', '{"format":1,"tool":"restic","createdAt":"2026-11-22T03:00:00.000Z"}', /"tool" is "restic", not "tandem"/],
    ['no tool', '{"format":1}', /"tool" is missing/],
    ['a newer format', '{"format":2,"tool":"tandem","createdAt":"2026-11-22T03:00:00.000Z"}', /format 2 is newer/],
    ['a bad time', '{"format":1,"tool":"tandem","createdAt":"yesterday"}', /createdAt/],
    ['an array', '[1]', /not a JSON object/],
  ])('refuses a marker that is %s', async (_what, body, message) => {
    const root = parent();
    await writeFile(join(root, FILESTORE_MARKER_KEY), body);
    const err = await rejectedWith(requireFilestoreMarker(new DirFilestore(root), { url: urlOf(root) }), { kind: 'config', code: 'STORE_MARKER_INVALID' });
    expect(err.message).toContain(`${urlOf(root)}/tandem-filestore.json is not a tandem filestore marker`);
    expect(err.message).toMatch(message);
  });

  it('refuses a marker too large to be one, without reading it all', async () => {
    const root = parent();
    await writeFile(join(root, FILESTORE_MARKER_KEY), Buffer.alloc(64 * 1024, 0x20));
    const err = await rejectedWith(readFilestoreMarker(new DirFilestore(root)), { code: 'STORE_MARKER_INVALID' });
    expect(err.message).toMatch(/larger than the 4096 bytes/);
  });

  it('passes a filestore error through as it is (not "uninitialised")', async () => {
    const file = join(parent(), 'plain-file');
    await writeFile(file, 'x');
    await rejectedWith(requireFilestoreMarker(new DirFilestore(join(file, 'fs')), { url: 'file:///x' }), { kind: 'permanent', code: 'FILESTORE_ENOTDIR' });
  });

  it('accepts members a newer tandem adds without raising the format', () => {
    expect(parseFilestoreMarker(Buffer.from('{"format":1,"tool":"tandem","createdAt":"2026-11-22T03:00:00.000Z","host":"a"}'), 'x')).toEqual({
      format: 1,
      tool: 'tandem',
      createdAt: '2026-11-22T03:00:00.000Z',
    });
  });
});

describe('the directory store never creates its own directory', () => {
  it('refuses writes into a missing directory, creating nothing; directories below an existing one are made', async () => {
    const base = parent();
    const root = join(base, 'nope', 'fs');
    const fs = new DirFilestore(root);
    const put = await rejectedWith(fs.putBuffer('demo/latest.json', Buffer.from('{}')), { kind: 'permanent', code: 'FILESTORE_ROOT_MISSING' });
    expect(put.message).toContain(`the filestore directory ${root} does not exist`);
    expect(put.hint).toContain('tandem-primary init --filestore');
    await rejectedWith(fs.writeConditional('demo/epoch.json', Buffer.from('1'), { ifAbsent: true }), { code: 'FILESTORE_ROOT_MISSING' });
    await rejectedWith(fs.putBuffer('top.json', Buffer.from('1')), { code: 'FILESTORE_ROOT_MISSING' });
    expect(existsSync(join(base, 'nope'))).toBe(false);

    await writeFilestoreMarker(new DirFilestore(join(base, 'ok')));
    const ok = new DirFilestore(join(base, 'ok'));
    await ok.putBuffer('demo/sets/1/manifest.json', Buffer.from('{}'));
    expect((await stat(join(base, 'ok', 'demo', 'sets', '1'))).mode & 0o777).toBe(0o700);
  });
});

/** Counts the reads of the marker that reach the store. */
function counting(inner: Filestore): Filestore & { markerReads: number } {
  const fs = Object.create(inner) as Filestore & { markerReads: number };
  fs.markerReads = 0;
  fs.getBuffer = (key, opts) => {
    if (key === FILESTORE_MARKER_KEY) fs.markerReads++;
    return inner.getBuffer(key, opts);
  };
  return fs;
}

describe('MarkerGatedFilestore', () => {
  it('fails every operation with the marker error until the marker is there, then reads it no more', async () => {
    const root = parent();
    const inner = counting(new DirFilestore(root));
    const gated = new MarkerGatedFilestore(inner, { url: urlOf(root) });
    await rejectedWith(gated.putBuffer('demo/heartbeat.json', Buffer.from('{}')), { code: 'STORE_UNINITIALISED' });
    await rejectedWith(gated.getIfChanged('demo/latest.json', undefined), { code: 'STORE_UNINITIALISED' });
    await rejectedWith(gated.list('demo/'), { code: 'STORE_UNINITIALISED' });
    expect(existsSync(join(root, 'demo'))).toBe(false);
    expect(gated.marker).toBeUndefined();
    expect(inner.markerReads).toBe(3);

    await writeFilestoreMarker(new DirFilestore(root));
    await Promise.all([gated.putBuffer('demo/a', Buffer.from('1')), gated.putBuffer('demo/b', Buffer.from('2'))]);
    expect(inner.markerReads).toBe(4); // the two concurrent operations shared one read
    for (let i = 0; i < 5; i++) await gated.getBuffer('demo/a');
    expect(inner.markerReads).toBe(4);
    expect(gated.marker?.tool).toBe('tandem');
  });
});
