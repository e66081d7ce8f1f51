import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCluster, runAsPostgres, type PgCluster } from '../../../../test/support/pg-cluster.js';
import { generateAgeKeyPair } from '../crypto/age/index.js';
import { generateSigningKeyPair } from '../crypto/sign.js';
import { TandemError } from '../errors.js';
import { DirFilestore } from '../filestore/dir-filestore.js';
import { signDocument } from '../store/signed-doc.js';
import { rejectedWith, thrownBy } from '../testing/helpers.js';
import {
  WAL_PREFIX,
  controlSystemId,
  fetchWalFile,
  parseWalDoc,
  parseWalName,
  segmentSystemId,
  storeWalFile,
  walKeys,
  type WalDoc,
} from './wal-file.js';

/**
 * WAL files through a real directory filestore, real zstd and age, with segments a real
 * PostgreSQL 15 cluster wrote: every tampering with the stored objects is refused and leaves
 * nothing at the target.
 */
const SITE = 'demo';
const SEG1 = '000000010000000000000001';
const SEG2 = '000000010000000000000002';

let root: string;
let cluster: PgCluster;
/** pg_controldata's "Database system identifier". */
let systemId: string;
/** Copies of two complete segments the cluster wrote (owned by us, outside the data dir). */
let seg1: string;
let seg2: string;

const sig = generateSigningKeyPair();
const signingKey: KeyObject = createPrivateKey(sig.privateKeyPem);
const verifyKey: KeyObject = createPublicKey(sig.publicKeyPem);
const other = generateSigningKeyPair();
const otherSigningKey = createPrivateKey(other.privateKeyPem);
const age = generateAgeKeyPair();
const otherAge = generateAgeKeyPair();

let seq = 0;
/** A fresh directory filestore, staging dir (0700) and target dir. */
async function fixture(): Promise<{ fs: DirFilestore; fsRoot: string; staging: string; targetDir: string }> {
  const dir = join(root, `t${++seq}`);
  const fsRoot = join(dir, 'store');
  const staging = join(dir, 'staging');
  const targetDir = join(dir, 'pg_wal');
  await mkdir(fsRoot, { recursive: true });
  await mkdir(staging, { mode: 0o700 });
  await mkdir(targetDir);
  return { fs: new DirFilestore(fsRoot), fsRoot, staging, targetDir };
}

type Fixture = Awaited<ReturnType<typeof fixture>>;

const store = (f: Fixture, name: string, path: string, more: { recipients?: string[] | null; systemId?: string } = {}) =>
  storeWalFile({
    filestore: f.fs,
    site: SITE,
    path,
    name,
    epoch: 7,
    primaryId: 'agent-primary-1',
    systemId: more.systemId ?? systemId,
    recipients: more.recipients === undefined ? [age.recipient] : more.recipients,
    signingKey,
    now: () => new Date('2026-11-22T03:00:00.000Z'),
  });

const fetch = (f: Fixture, name: string, more: { identities?: string[]; expect?: { systemId?: string }; target?: string } = {}) =>
  fetchWalFile({
    filestore: f.fs,
    site: SITE,
    name,
    verifyKey,
    identities: more.identities ?? [age.identity],
    stagingDir: f.staging,
    target: more.target ?? join(f.targetDir, 'RECOVERYXLOG'),
    expect: more.expect,
  });

/** Nothing at the target, no temporary beside it, nothing left in staging. */
async function expectNothingWritten(f: Fixture): Promise<void> {
  expect(await readdir(f.targetDir)).toEqual([]);
  expect(await readdir(f.staging)).toEqual([]);
}

/** A directory filestore that runs a hook (once) before its next put or conditional write. */
class HookedStore extends DirFilestore {
  hooks: { put?: () => Promise<void>; writeConditional?: () => Promise<void> } = {};

  override async put(...args: Parameters<DirFilestore['put']>): ReturnType<DirFilestore['put']> {
    const hook = this.hooks.put;
    this.hooks.put = undefined;
    await hook?.();
    return super.put(...args);
  }

  override async writeConditional(...args: Parameters<DirFilestore['writeConditional']>): ReturnType<DirFilestore['writeConditional']> {
    const hook = this.hooks.writeConditional;
    this.hooks.writeConditional = undefined;
    await hook?.();
    return super.writeConditional(...args);
  }
}

const objectPath = (f: Fixture, key: string): string => join(f.fsRoot, key);

/** Re-sign a stored WAL document with `change` applied (what only a holder of a signing key can do). */
async function resign(f: Fixture, name: string, change: (doc: Record<string, unknown>) => void, key = signingKey): Promise<void> {
  const p = objectPath(f, walKeys(SITE, name).doc);
  const { signature: _sig, ...body } = JSON.parse(await readFile(p, 'utf8')) as Record<string, unknown>;
  change(body);
  await writeFile(p, signDocument(body, key));
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'tandem-wal-file-'));
  cluster = await createCluster({ name: 'wal-file' });
  const out = await runAsPostgres('pg_controldata', [cluster.dataDir]);
  const m = /^Database system identifier:\s+(\d+)$/m.exec(out);
  if (!m?.[1]) throw new Error(`no system identifier in pg_controldata output:\n${out}`);
  systemId = m[1];
  // Two complete segments: the one initdb began, finished by a switch, and the next one.
  await cluster.start();
  await cluster.query('CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 20000) g');
  await cluster.query('SELECT pg_switch_wal()');
  await cluster.query('INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g');
  await cluster.query('SELECT pg_switch_wal()');
  seg1 = join(root, SEG1);
  seg2 = join(root, SEG2);
  await copyFile(join(cluster.dataDir, 'pg_wal', SEG1), seg1);
  await copyFile(join(cluster.dataDir, 'pg_wal', SEG2), seg2);
  await cluster.stop();
});

afterAll(async () => {
  await cluster?.destroy();
  if (root) await rm(root, { recursive: true, force: true });
});

describe('WAL file names', () => {
  it('parses the four kinds PostgreSQL archives and nothing else', () => {
    expect(parseWalName(SEG1)).toEqual({ kind: 'segment', timeline: 1 });
    expect(parseWalName('0000000A00000003000000FF.partial')).toEqual({ kind: 'partial', timeline: 10 });
    expect(parseWalName('000000020000000000000003.00000028.backup')).toEqual({ kind: 'backup', timeline: 2 });
    expect(parseWalName('0000001F.history')).toEqual({ kind: 'history', timeline: 31 });
    for (const bad of [
      '00000001000000000000000a', // lower case
      '00000001000000000000001',
      '0000000100000000000000011',
      '../000000010000000000000001',
      'pg_wal/000000010000000000000001',
      '000000010000000000000001/',
      '..',
      '',
      '00000001.HISTORY',
      '000000010000000000000001.backup',
      '000000000000000000000001', // timeline 0
      'RECOVERYXLOG',
    ]) {
      expect(parseWalName(bad), bad).toBeNull();
    }
  });

  it('keys every object of a site under <site>/wal/', () => {
    expect(WAL_PREFIX(SITE)).toBe('demo/wal/');
    expect(walKeys(SITE, SEG1)).toEqual({ body: `demo/wal/${SEG1}.zst.age`, doc: `demo/wal/${SEG1}.json` });
    expect(walKeys(SITE, SEG1, 'none').body).toBe(`demo/wal/${SEG1}.zst`);
  });
});

describe('system ids', () => {
  it('pg_control and the segments a cluster wrote carry the id pg_controldata prints', async () => {
    expect(systemId).toMatch(/^\d{15,20}$/);
    expect(await controlSystemId(cluster.dataDir)).toBe(systemId);
    expect(segmentSystemId(await readFile(seg1))).toBe(systemId);
    expect(segmentSystemId((await readFile(seg2)).subarray(0, 40))).toBe(systemId);
  });

  it('refuses what is not a segment', async () => {
    const head = (await readFile(seg1)).subarray(0, 40);
    thrownBy(() => segmentSystemId(head.subarray(0, 39)), { kind: 'integrity', code: 'WAL_NOT_SEGMENT' });
    const short = Buffer.from(head);
    short.writeUInt16LE(short.readUInt16LE(2) & ~0x0002, 2); // a short page header: not a segment's first page
    thrownBy(() => segmentSystemId(short), { kind: 'integrity', code: 'WAL_NOT_SEGMENT' });
    await rejectedWith(controlSystemId(root), { kind: 'config', code: 'PG_CONTROL_UNREADABLE' });
  });
});

describe('storing and fetching', () => {
  it('round-trips a real segment: the same bytes at the target, 0600, nothing left over', async () => {
    const f = await fixture();
    const stored = await store(f, SEG1, seg1);
    expect(stored.status).toBe('stored');
    const plain = await readFile(seg1);
    expect(stored.doc).toMatchObject({
      format: 'tandem-wal',
      version: 1,
      site: SITE,
      name: SEG1,
      kind: 'segment',
      timeline: 1,
      systemId,
      epoch: 7,
      primaryId: 'agent-primary-1',
      archivedAt: '2026-11-22T03:00:00.000Z',
      plainSize: plain.length,
      file: `${SEG1}.zst.age`,
      compression: 'zstd',
      encryption: 'age',
    });
    const keys = walKeys(SITE, SEG1);
    const body = await readFile(objectPath(f, keys.body));
    expect(body.subarray(0, 21).toString()).toBe('age-encryption.org/v1');
    expect(body.length).toBe(stored.doc.storedSize);
    expect(body.length).toBeLessThan(plain.length / 4);
    // The doc as the standby reads it.
    expect(parseWalDoc(await readFile(objectPath(f, keys.doc)), verifyKey, { site: SITE, name: SEG1 })).toEqual(stored.doc);

    const target = join(f.targetDir, 'RECOVERYXLOG');
    const got = await fetch(f, SEG1, { expect: { systemId } });
    expect(got).toEqual({ status: 'restored', doc: stored.doc });
    expect((await readFile(target)).equals(plain)).toBe(true);
    expect((await stat(target)).mode & 0o777).toBe(0o600);
    expect(await readdir(f.targetDir)).toEqual(['RECOVERYXLOG']);
    expect(await readdir(f.staging)).toEqual([]);
  });

  it('stores a .partial, a backup history and a timeline history file (given relative to the working directory)', async () => {
    const f = await fixture();
    const files: Array<[string, Buffer]> = [
      [`${SEG2}.partial`, await readFile(seg2)],
      [`${SEG1}.00000028.backup`, Buffer.from('START WAL LOCATION: 0/1000028 (file 000000010000000000000001)\nSTOP WAL LOCATION: 0/1000100 (file 000000010000000000000001)\n')],
      ['00000002.history', Buffer.from('1\t0/3000000\tno recovery target specified\n')],
    ];
    for (const [name, content] of files) {
      const src = join(root, `src-${seq}-${name}`);
      await writeFile(src, content);
      const stored = await store(f, name, relative(process.cwd(), src));
      expect(stored.status).toBe('stored');
      expect(stored.doc.kind).toBe(parseWalName(name)?.kind);
      const target = join(f.targetDir, name);
      expect((await fetch(f, name, { target })).status).toBe('restored');
      expect((await readFile(target)).equals(content)).toBe(true);
    }
    expect(await readdir(join(f.fsRoot, SITE, 'wal'))).toHaveLength(6);
  });

  it('stores the same file twice as already-stored, changing nothing', async () => {
    const f = await fixture();
    const first = await store(f, SEG1, seg1);
    const keys = walKeys(SITE, SEG1);
    const before = [await readFile(objectPath(f, keys.doc)), await readFile(objectPath(f, keys.body))];
    const again = await storeWalFile({
      filestore: f.fs,
      site: SITE,
      path: seg1,
      name: SEG1,
      epoch: 8,
      primaryId: 'agent-primary-2',
      systemId,
      recipients: [age.recipient],
      signingKey,
    });
    expect(again).toEqual({ status: 'already-stored', doc: first.doc });
    expect((await readFile(objectPath(f, keys.doc))).equals(before[0]!)).toBe(true);
    expect((await readFile(objectPath(f, keys.body))).equals(before[1]!)).toBe(true);
  });

  it('refuses other content under a stored name, and changes nothing', async () => {
    const f = await fixture();
    await store(f, SEG1, seg1);
    const keys = walKeys(SITE, SEG1);
    const before = [await readFile(objectPath(f, keys.doc)), await readFile(objectPath(f, keys.body))];
    const err = await rejectedWith(store(f, SEG1, seg2), { kind: 'integrity', code: 'WAL_ALREADY_DIFFERENT' });
    expect(err.message).toContain(keys.doc);
    expect(err.message).toContain('PostgreSQL keeps the file and retries');
    expect((await readFile(objectPath(f, keys.doc))).equals(before[0]!)).toBe(true);
    expect((await readFile(objectPath(f, keys.body))).equals(before[1]!)).toBe(true);
  });

  it('two writers storing the same file at once leave one whole entry', async () => {
    const f = await fixture();
    const both = await Promise.all([store(f, SEG1, seg1), store(f, SEG1, seg1)]);
    expect(both.map((r) => r.status)).toContain('stored');
    expect((await fetch(f, SEG1)).status).toBe('restored');
    expect((await readFile(join(f.targetDir, 'RECOVERYXLOG'))).equals(await readFile(seg1))).toBe(true);
  });

  it('a writer that loses the race to another keeps whichever entry is whole', async () => {
    // The other writer runs all the way through at one of two points of this one: before its body
    // upload (which then replaces the other's body: its own document must win), and between its
    // body and its document (the other's body replaced this one's: the other's entry stands).
    for (const at of ['put', 'writeConditional'] as const) {
      const f = await fixture();
      const hooked = new HookedStore(f.fsRoot);
      let theirs: WalDoc | undefined;
      hooked.hooks[at] = async () => {
        theirs = (await store(f, SEG1, seg1)).doc;
      };
      const ours = await storeWalFile({
        filestore: hooked,
        site: SITE,
        path: seg1,
        name: SEG1,
        epoch: 7,
        primaryId: 'agent-primary-1',
        systemId,
        recipients: [age.recipient],
        signingKey,
      });
      expect(theirs, at).toBeDefined();
      const committed = parseWalDoc(await readFile(objectPath(f, walKeys(SITE, SEG1).doc)), verifyKey, { site: SITE, name: SEG1 });
      if (at === 'put') {
        expect(ours.status).toBe('stored');
        expect(committed.storedSha256).toBe(ours.doc.storedSha256);
        expect(committed.storedSha256).not.toBe(theirs?.storedSha256);
      } else {
        expect(ours).toEqual({ status: 'already-stored', doc: theirs });
        expect(committed).toEqual(theirs);
      }
      expect((await fetch(f, SEG1)).status).toBe('restored');
      expect((await readFile(join(f.targetDir, 'RECOVERYXLOG'))).equals(await readFile(seg1))).toBe(true);
    }
  });

  it('stores again over an entry whose body is missing or not the one its document signed', async () => {
    const f = await fixture();
    const elsewhere = await fixture();
    await store(f, SEG1, seg1);
    await store(elsewhere, SEG1, seg1);
    const body = walKeys(SITE, SEG1).body;
    // Another encryption of the same content: what a crash between a body and its document leaves.
    await copyFile(objectPath(elsewhere, body), objectPath(f, body));
    await rejectedWith(fetch(f, SEG1), { code: 'WAL_BODY_MISMATCH' });
    expect((await store(f, SEG1, seg1)).status).toBe('stored');
    expect((await fetch(f, SEG1)).status).toBe('restored');

    await unlink(objectPath(f, body));
    expect((await store(f, SEG1, seg1)).status).toBe('stored');
    expect((await fetch(f, SEG1, { target: join(f.targetDir, 'again') })).status).toBe('restored');
  });

  it('round-trips a file stored unencrypted', async () => {
    const f = await fixture();
    const stored = await store(f, SEG1, seg1, { recipients: null });
    expect(stored.doc).toMatchObject({ encryption: 'none', file: `${SEG1}.zst` });
    expect(existsSync(objectPath(f, `${SITE}/wal/${SEG1}.zst`))).toBe(true);
    expect(existsSync(objectPath(f, walKeys(SITE, SEG1).body))).toBe(false);
    const got = await fetch(f, SEG1, { identities: [] });
    expect(got.status).toBe('restored');
    expect((await readFile(join(f.targetDir, 'RECOVERYXLOG'))).equals(await readFile(seg1))).toBe(true);
  });

  it('fetching a name the filestore does not have is missing, and writes nothing', async () => {
    const f = await fixture();
    await store(f, SEG1, seg1);
    expect(await fetch(f, SEG2)).toEqual({ status: 'missing' });
    expect(await fetch(f, '00000002.history')).toEqual({ status: 'missing' });
    await expectNothingWritten(f);
  });

  it('refuses a segment of another cluster, and a name that is not a WAL file\'s', async () => {
    const f = await fixture();
    const err = await rejectedWith(store(f, SEG1, seg1, { systemId: '7000000000000000001' }), { kind: 'integrity', code: 'WAL_FOREIGN_SEGMENT' });
    expect(err.message).toContain(systemId);
    expect(err.message).toContain('7000000000000000001');
    for (const name of ['../x', '00000001000000000000000a', `wal/${SEG1}`, `/${SEG1}`, 'RECOVERYXLOG']) {
      await rejectedWith(store(f, name, seg1), { kind: 'config', code: 'WAL_BAD_NAME' });
      await rejectedWith(fetch(f, name), { kind: 'config', code: 'WAL_BAD_NAME' });
    }
    expect(existsSync(join(f.fsRoot, SITE))).toBe(false);
    await expectNothingWritten(f);
  });
});

describe('tampering', () => {
  /** A store holding both segments. */
  async function stored(): Promise<Fixture> {
    const f = await fixture();
    await store(f, SEG1, seg1);
    await store(f, SEG2, seg2);
    return f;
  }

  const body1 = walKeys(SITE, SEG1).body;
  const doc1 = walKeys(SITE, SEG1).doc;

  it('a body with a byte flipped', async () => {
    const f = await stored();
    const p = objectPath(f, body1);
    const b = await readFile(p);
    b.writeUInt8(b.readUInt8(b.length - 100) ^ 0x01, b.length - 100);
    await writeFile(p, b);
    const err = await rejectedWith(fetch(f, SEG1), { kind: 'integrity', code: 'WAL_BODY_MISMATCH' });
    expect(err.message).toContain(SEG1);
    expect(err.message).toContain(body1);
    await expectNothingWritten(f);
  });

  it('a truncated body, a longer one, and none', async () => {
    const f = await stored();
    const p = objectPath(f, body1);
    const b = await readFile(p);
    await writeFile(p, b.subarray(0, b.length - 1));
    await rejectedWith(fetch(f, SEG1), { kind: 'integrity', code: 'WAL_BODY_MISMATCH' });
    await expectNothingWritten(f);
    await writeFile(p, Buffer.concat([b, Buffer.from('x')]));
    await rejectedWith(fetch(f, SEG1), { kind: 'integrity', code: 'WAL_BODY_MISMATCH' });
    await expectNothingWritten(f);
    await unlink(p);
    await rejectedWith(fetch(f, SEG1), { kind: 'integrity', code: 'WAL_BODY_MISSING' });
    await expectNothingWritten(f);
  });

  it('another segment\'s body in its place', async () => {
    const f = await stored();
    await copyFile(objectPath(f, walKeys(SITE, SEG2).body), objectPath(f, body1));
    await rejectedWith(fetch(f, SEG1), { kind: 'integrity', code: 'WAL_BODY_MISMATCH' });
    await expectNothingWritten(f);
  });

  it('an edited document', async () => {
    const f = await stored();
    const p = objectPath(f, doc1);
    const text = await readFile(p, 'utf8');
    expect(text).toContain('"epoch": 7,');
    await writeFile(p, text.replace('"epoch": 7,', '"epoch": 8,'));
    await rejectedWith(fetch(f, SEG1), { kind: 'integrity', code: 'DOC_BAD_SIGNATURE' });
    await expectNothingWritten(f);
  });

  it('a document copied to another name or another site', async () => {
    const f = await stored();
    // Segment 1's doc and body under segment 2's names: a replay.
    await copyFile(objectPath(f, doc1), objectPath(f, walKeys(SITE, SEG2).doc));
    await copyFile(objectPath(f, body1), objectPath(f, walKeys(SITE, SEG2).body));
    const err = await rejectedWith(fetch(f, SEG2), { kind: 'integrity', code: 'WAL_MISPLACED' });
    expect(err.message).toContain(`a signed doc for ${doc1} found under ${walKeys(SITE, SEG2).doc}`);
    await expectNothingWritten(f);

    await mkdir(join(f.fsRoot, 'other', 'wal'), { recursive: true });
    await copyFile(objectPath(f, doc1), objectPath(f, walKeys('other', SEG1).doc));
    await copyFile(objectPath(f, body1), objectPath(f, walKeys('other', SEG1).body));
    await rejectedWith(fetchWalFile({ filestore: f.fs, site: 'other', name: SEG1, verifyKey, identities: [age.identity], stagingDir: f.staging, target: join(f.targetDir, 'x') }), {
      kind: 'integrity',
      code: 'WAL_MISPLACED',
    });
    await expectNothingWritten(f);
  });

  it('a document signed by another key', async () => {
    const f = await stored();
    await resign(f, SEG1, () => undefined, otherSigningKey);
    await rejectedWith(fetch(f, SEG1), { kind: 'integrity', code: 'DOC_FOREIGN_KEY' });
    await expectNothingWritten(f);
    // The primary does not take it for its own entry either.
    await rejectedWith(store(f, SEG1, seg1), { kind: 'integrity', code: 'DOC_FOREIGN_KEY' });
  });

  it('a segment of another cluster than the standby expects', async () => {
    const f = await stored();
    const err = await rejectedWith(fetch(f, SEG1, { expect: { systemId: '7000000000000000001' } }), { kind: 'integrity', code: 'WAL_FOREIGN_SEGMENT' });
    expect(err.message).toContain(SEG1);
    await expectNothingWritten(f);
  });

  it('a signed document that does not describe its body: plain size, digest or system id', async () => {
    const f = await stored();
    const cases: Array<[(d: Record<string, unknown>) => void, string]> = [
      [(d) => void (d.plainSize = (d.plainSize as number) - 1), 'WAL_PLAIN_SIZE'],
      [(d) => void (d.plainSize = (d.plainSize as number) + 1), 'WAL_PLAIN_SIZE'],
      [(d) => void (d.plainSha256 = '0'.repeat(64)), 'WAL_PLAIN_MISMATCH'],
      [(d) => void (d.systemId = '7000000000000000001'), 'WAL_FOREIGN_SEGMENT'],
      [(d) => void (d.kind = 'history'), 'WAL_DOC_INVALID'],
      [(d) => void (d.file = `${SEG2}.zst.age`), 'WAL_DOC_INVALID'],
      [(d) => void (d.storedSize = 3 * 1024 * 1024 * 1024), 'WAL_DOC_INVALID'],
    ];
    const original = await readFile(objectPath(f, doc1));
    for (const [change, code] of cases) {
      await writeFile(objectPath(f, doc1), original);
      await resign(f, SEG1, change);
      await rejectedWith(fetch(f, SEG1), { kind: 'integrity', code });
      await expectNothingWritten(f);
    }
  });

  it('a document the caller\'s own check refuses', async () => {
    const f = await stored();
    const seen: WalDoc[] = [];
    const refused = fetchWalFile({
      filestore: f.fs,
      site: SITE,
      name: SEG1,
      verifyKey,
      identities: [age.identity],
      stagingDir: f.staging,
      target: join(f.targetDir, 'RECOVERYXLOG'),
      accept: (doc) => {
        seen.push(doc);
        throw new TandemError('integrity', 'WAL_EPOCH_AHEAD', `stored in epoch ${doc.epoch}`);
      },
    });
    await rejectedWith(refused, { kind: 'integrity', code: 'WAL_EPOCH_AHEAD' });
    expect(seen.map((d) => [d.name, d.epoch])).toEqual([[SEG1, 7]]);
    await expectNothingWritten(f);
  });

  it('a standby whose age key is not a recipient', async () => {
    const f = await stored();
    await rejectedWith(fetch(f, SEG1, { identities: [otherAge.identity] }), { kind: 'integrity', code: 'AGE_NO_IDENTITY_MATCH' });
    await expectNothingWritten(f);
  });

  it('leaves an existing target alone when the new file is refused', async () => {
    const f = await stored();
    const target = join(f.targetDir, 'RECOVERYXLOG');
    await writeFile(target, 'old');
    const p = objectPath(f, body1);
    const b = await readFile(p);
    b.writeUInt8(b.readUInt8(200) ^ 0xff, 200);
    await writeFile(p, b);
    await rejectedWith(fetch(f, SEG1), { code: 'WAL_BODY_MISMATCH' });
    expect(await readFile(target, 'utf8')).toBe('old');
    expect(await readdir(f.targetDir)).toEqual(['RECOVERYXLOG']);
  });
});
