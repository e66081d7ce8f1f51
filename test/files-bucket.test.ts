/**
 * Files that live in object storage (Zotonic's mod_filestore, Parsec): paths.files is an s3:// URL
 * on the primary, and on a standby either a bucket or a directory. s3rver plays the site's buckets
 * as well as the filestore. A backup dumps the database first, lists the bucket once and reads only
 * objects it has not stored before (by size and ETag); an apply copies only what changed into the
 * standby's bucket and deletes there only what the primary's listing no longer has.
 */
import { createHash, randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openFilestore, type Filestore, type ObjectInfo } from '@tandem/shared';
import { S3RVER_CREDENTIALS, s3rverEnv, s3rverFilestoreUrl, startS3rver, type S3rverHandle } from './support/s3rver.js';
import { ensurePostgres, runPrimary, snapshotTree, tmpDir } from './support/site.js';
import { apply, createStandbySite, dropSiteDatabases, show, writeSitePrimaryConfig, writeStandbyConfig, type StandbySite } from './support/standby-helpers.js';
import { parse as fromYaml, stringify as toYaml } from 'yaml';
import { readFile, writeFile } from 'node:fs/promises';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function contents(fs: Filestore): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const o of await fs.list('')) {
    const pieces: Buffer[] = [];
    for await (const c of (await fs.get(o.key)).body as AsyncIterable<Buffer>) pieces.push(c);
    out[o.key] = sha(Buffer.concat(pieces));
  }
  return out;
}

async function setFilesPath(file: string, files: string): Promise<void> {
  const doc = fromYaml(await readFile(file, 'utf8')) as { paths: { files: string } };
  doc.paths.files = files;
  await writeFile(file, toYaml(doc));
}

describe('files in a bucket (s3:// paths.files)', () => {
  let root: string;
  let s3: S3rverHandle;
  let s: StandbySite;
  let media: Filestore;
  let standbyMedia: Filestore;
  let mediaUrl: string;
  let standbyMediaUrl: string;

  const backupJson = async () => {
    const r = await runPrimary(['backup', '--config', s.primary.configFile, '--json'], { env: s.env });
    expect(r.code, show(r)).toBe(0);
    return JSON.parse(r.stdout) as { setId: string; files: { files: number; filesRead: number; blobsUploaded: number } };
  };

  beforeAll(async () => {
    await ensurePostgres();
    root = await tmpDir('tandem-files-bucket-');
    s3 = await startS3rver({ buckets: ['tandem', 'media', 'standby-media'] });
    s = await createStandbySite(root, { filesObjects: true, filestoreUrl: s3rverFilestoreUrl(s3, { prefix: 'unique' }), env: s3rverEnv() });
    mediaUrl = s3rverFilestoreUrl(s3, { bucket: 'media', prefix: 'site-a/' });
    standbyMediaUrl = s3rverFilestoreUrl(s3, { bucket: 'standby-media' });
    const opts = { s3: { credentials: S3RVER_CREDENTIALS } };
    media = openFilestore(mediaUrl, opts);
    standbyMedia = openFilestore(standbyMediaUrl, opts);
    await setFilesPath(s.primary.configFile, mediaUrl);
    await setFilesPath(s.standby.configFile, standbyMediaUrl);
    await media.putBuffer('uploads/2026/01/photo.jpg', randomBytes(40_000));
    await media.putBuffer('uploads/2026/01/video.mp4', randomBytes(6 * 1024 * 1024));
    for (let i = 0; i < 30; i++) await media.putBuffer(`thumbs/t${i}.png`, randomBytes(1_000 + i * 50));
    await media.putBuffer('readme.txt', Buffer.from('hello\n'));
  }, 120_000);

  afterAll(async () => {
    await media?.close();
    await standbyMedia?.close();
    if (s) await dropSiteDatabases(s);
    await s3?.destroy();
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('backs up the bucket and applies it into the standby bucket, exactly', async () => {
    const r = await backupJson();
    expect(r.files.files).toBe(33);
    expect(r.files.filesRead).toBe(33);
    const a = await apply(s);
    expect(a.code, show(a)).toBe(0);
    expect(await contents(standbyMedia)).toEqual(await contents(media));
  }, 120_000);

  it('the next set reads and copies only what changed, and deletes only what the primary no longer lists', async () => {
    await media.putBuffer('uploads/2026/02/new.jpg', randomBytes(20_000));
    await media.putBuffer('thumbs/t3.png', randomBytes(1_234));
    await media.delete('thumbs/t7.png');
    await standbyMedia.putBuffer('stray-on-standby.txt', Buffer.from('not the primary\'s\n'));
    const untouched = (await standbyMedia.stat('uploads/2026/01/video.mp4')) as ObjectInfo;
    const r = await backupJson();
    expect(r.files.filesRead).toBe(2);
    const a = await apply(s);
    expect(a.code, show(a)).toBe(0);
    expect(await contents(standbyMedia)).toEqual(await contents(media));
    // The 6 MiB object was not copied again.
    expect((await standbyMedia.stat('uploads/2026/01/video.mp4'))?.modified.getTime()).toBe(untouched.modified.getTime());
  }, 120_000);

  it('a standby whose paths.files is a directory gets the same tree', async () => {
    const dirConfig = join(root, 'standby-dir.yml');
    await writeStandbyConfig(s, dirConfig, { stateDir: join(root, 'standby-dir-state') });
    await setFilesPath(dirConfig, join(root, 'standby-dir-files'));
    const doc = fromYaml(await readFile(dirConfig, 'utf8')) as { database: { url: string } };
    doc.database.url = doc.database.url.replace(s.standby.db, `${s.standby.db}_dir`);
    await writeFile(dirConfig, toYaml(doc));
    const a = await apply(s, [], {}, dirConfig);
    expect(a.code, show(a)).toBe(0);
    const tree = await snapshotTree(join(root, 'standby-dir-files'));
    const files = Object.fromEntries(tree.filter((e) => e.type === 'file').map((e) => [e.path, e.sha256]));
    expect(files).toEqual(await contents(media));
    await dropSiteDatabases({ ...s, standby: { ...s.standby, db: `${s.standby.db}_dir` } });
  }, 120_000);

  it('a bucket of files without a files key is refused, naming paths.files', async () => {
    const file = join(root, 'no-key.yml');
    await writeSitePrimaryConfig({ ...s, filesObjects: false }, file);
    await setFilesPath(file, mediaUrl);
    const r = await runPrimary(['backup', '--config', file], { env: s.env });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/paths\.files.*keys\.filesKeyFile/);
  });
});
