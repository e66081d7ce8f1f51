/**
 * WAL files in the filestore, for WAL mode: the primary's archive_command stores each file
 * PostgreSQL hands it (segments, partial segments, backup and timeline history files), a standby's
 * restore_command fetches them back.
 *
 * Two objects per file, the body first and the signed document last, so the document's presence
 * commits the file:
 *
 *   <site>/wal/<name>.zst.age   zstd (level 1), then age (`<name>.zst` when encryption is none)
 *   <site>/wal/<name>.json      signed (store/signed-doc.ts): sizes and SHA-256 of the plain and the
 *                               stored bytes, the cluster's system id, the primary's epoch and id
 *
 * Storing is idempotent, because PostgreSQL archives a file again after a crash that came before
 * it noted the success: a committed entry of the same content is 'already-stored'; one of other
 * content is refused (PostgreSQL keeps the file and retries, and the operator finds out why). An
 * entry whose body does not match its document (a crash or a race between the two writes) is
 * stored again over it, so a retry repairs it.
 *
 * Fetching uses nothing the signature does not vouch for: the body is downloaded to a 0600 staging
 * file, bounded by the signed stored size and hashed, before a byte of it reaches age or zstd; the
 * plain bytes go to a temporary beside the target, bounded by the signed plain size, and are hashed
 * again before the rename. Nothing appears at the target unless it verified.
 */
import { createHash, createPublicKey, randomBytes, type KeyObject } from 'node:crypto';
import { constants, createReadStream } from 'node:fs';
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { PassThrough, Readable, Transform, Writable, type Duplex, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { z } from 'zod';
import { zstdCompress, zstdDecompress } from '../compress.js';
import { createAgeDecryptStream, createAgeEncryptStream } from '../crypto/age/index.js';
import { TandemError, describeError, isNotFound, isPrecondition, isTandemError } from '../errors.js';
import type { Filestore, WriteCondition } from '../filestore/filestore.js';
import { OPEN_NEW_FILE, fsyncDir } from '../fsutil.js';
import { epochNumber, firstIssue, isoTime, sha256Hex, siteName, SITE_PATTERN } from '../store/fields.js';
import { signDocument, verifyDocument } from '../store/signed-doc.js';
import { HashCounter } from '../streams.js';
import { faultPoint } from '../fault.js';

const MiB = 1024 * 1024;
/** The largest WAL file stored: wal_segment_size up to 64 MiB (PostgreSQL allows up to 1 GiB). */
export const WAL_MAX_PLAIN_BYTES = 64 * MiB;
/** A WAL document is a few hundred bytes; a reader refuses more than this. */
const WAL_DOC_MAX_BYTES = 64 * 1024;
/** XLogLongPageHeaderData is 40 bytes; its xlp_info carries XLP_LONG_HEADER. */
const LONG_HEADER_BYTES = 40;
const XLP_LONG_HEADER = 0x0002;
/** The restored file is read back for its digest: a new file, readable too, never through a symlink. */
const OPEN_NEW_FILE_RW = constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

export const WAL_KINDS = ['segment', 'partial', 'backup', 'history'] as const;
export type WalKind = (typeof WAL_KINDS)[number];
export type WalEncryption = 'age' | 'none';

// ---------------------------------------------------------------------------------------------
// Names and keys
// ---------------------------------------------------------------------------------------------

const NAME_PATTERNS: ReadonlyArray<[RegExp, WalKind]> = [
  [/^[0-9A-F]{24}$/, 'segment'],
  [/^[0-9A-F]{24}\.partial$/, 'partial'],
  [/^[0-9A-F]{24}\.[0-9A-F]{8}\.backup$/, 'backup'],
  [/^[0-9A-F]{8}\.history$/, 'history'],
];

/**
 * What PostgreSQL's file name says: the kind of file and its timeline (the first 8 hex digits).
 * Anything else (lower case, a path, timeline 0, which PostgreSQL never uses) is null.
 */
export function parseWalName(name: string): { kind: WalKind; timeline: number } | null {
  if (typeof name !== 'string') return null;
  for (const [re, kind] of NAME_PATTERNS) {
    if (!re.test(name)) continue;
    const timeline = Number.parseInt(name.slice(0, 8), 16);
    return timeline >= 1 ? { kind, timeline } : null;
  }
  return null;
}

export const WAL_PREFIX = (site: string): string => `${site}/wal/`;

/** The body's file name: what a document's `file` must be. */
export const walBodyFile = (name: string, encryption: WalEncryption): string => `${name}.zst${encryption === 'age' ? '.age' : ''}`;

/** The two objects of one WAL file (the body as stored with `encryption`, age by default). */
export function walKeys(site: string, name: string, encryption: WalEncryption = 'age'): { body: string; doc: string } {
  return { body: `${WAL_PREFIX(site)}${walBodyFile(name, encryption)}`, doc: `${WAL_PREFIX(site)}${name}.json` };
}

/** Refuses a site or a WAL file name that could not have come from the config or PostgreSQL. */
function checkNames(site: string, name: string): { kind: WalKind; timeline: number } {
  if (typeof site !== 'string' || !SITE_PATTERN.test(site)) {
    throw new TandemError('config', 'WAL_BAD_SITE', `WAL file ${String(name)}: site ${JSON.stringify(site)} is not a site name`);
  }
  const parsed = parseWalName(name);
  if (!parsed) {
    throw new TandemError(
      'config',
      'WAL_BAD_NAME',
      `${JSON.stringify(name)} is not the name of a WAL file (a segment, .partial, .backup or .history file as PostgreSQL names them)`,
      { hint: 'pass PostgreSQL\'s %f as the name, and %p as the path' },
    );
  }
  return parsed;
}

const fileLabel = (name: string, where: string): string => `WAL file ${name} (${where})`;

// ---------------------------------------------------------------------------------------------
// System ids
// ---------------------------------------------------------------------------------------------

/**
 * The database system identifier in a WAL segment's first page header (XLogLongPageHeaderData:
 * xlp_magic u16, xlp_info u16, xlp_tli u32, xlp_pageaddr u64, xlp_rem_len u32, padding, xlp_sysid
 * u64 at 24, xlp_seg_size u32, xlp_xlog_blcksz u32; little-endian), as a decimal string.
 */
export function segmentSystemId(firstPage: Buffer): string {
  if (firstPage.length < LONG_HEADER_BYTES) {
    throw new TandemError('integrity', 'WAL_NOT_SEGMENT', `not a WAL segment: ${firstPage.length} bytes, shorter than the ${LONG_HEADER_BYTES}-byte long page header`);
  }
  const info = firstPage.readUInt16LE(2);
  if ((info & XLP_LONG_HEADER) === 0) {
    throw new TandemError(
      'integrity',
      'WAL_NOT_SEGMENT',
      `not a WAL segment: its first page header has no XLP_LONG_HEADER flag (xlp_magic 0x${firstPage.readUInt16LE(0).toString(16)}, xlp_info 0x${info.toString(16)})`,
    );
  }
  return firstPage.readBigUInt64LE(24).toString();
}

/** The cluster's database system identifier: the first 8 bytes of `<dataDir>/global/pg_control`. */
export async function controlSystemId(dataDir: string): Promise<string> {
  const file = join(dataDir, 'global', 'pg_control');
  let fh: FileHandle | undefined;
  try {
    fh = await open(file, 'r');
    const buf = Buffer.alloc(8);
    const { bytesRead } = await fh.read(buf, 0, 8, 0);
    if (bytesRead < 8) throw new TandemError('integrity', 'PG_CONTROL_SHORT', `${file}: only ${bytesRead} bytes, not a PostgreSQL control file`);
    return buf.readBigUInt64LE(0).toString();
  } catch (err) {
    if (isTandemError(err)) throw err;
    throw new TandemError('config', 'PG_CONTROL_UNREADABLE', `${file}: cannot read the cluster's system id: ${describeError(err)}`, {
      hint: 'the data directory must be the cluster PostgreSQL runs (data_directory)',
      cause: err,
    });
  } finally {
    await fh?.close();
  }
}

// ---------------------------------------------------------------------------------------------
// The document
// ---------------------------------------------------------------------------------------------

const UINT64_MAX = (1n << 64n) - 1n;

/** A system id as PostgreSQL prints it: the decimal form of an unsigned 64-bit number. */
const systemIdField = z.string().regex(/^(0|[1-9][0-9]{0,19})$/, 'expected a decimal system id').refine((s) => BigInt(s) <= UINT64_MAX, 'expected a 64-bit system id');
const isSystemId = (s: unknown): s is string => systemIdField.safeParse(s).success;

export const walDocSchema = z
  .strictObject({
    format: z.literal('tandem-wal'),
    version: z.literal(1),
    site: siteName,
    name: z.string().refine((n) => parseWalName(n) !== null, 'expected a WAL file name'),
    kind: z.enum(WAL_KINDS),
    timeline: z.number().int().min(1).max(0xffffffff),
    systemId: systemIdField,
    epoch: epochNumber,
    primaryId: z.string().min(1),
    archivedAt: isoTime,
    plainSize: z.number().int().nonnegative().max(WAL_MAX_PLAIN_BYTES),
    plainSha256: sha256Hex,
    storedSize: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
    storedSha256: sha256Hex,
    file: z.string(),
    compression: z.literal('zstd'),
    encryption: z.enum(['age', 'none']),
  })
  .superRefine((d, ctx) => {
    const parsed = parseWalName(d.name);
    if (parsed && parsed.kind !== d.kind) ctx.addIssue({ code: 'custom', path: ['kind'], message: `the name ${d.name} is a ${parsed.kind}` });
    if (parsed && parsed.timeline !== d.timeline) ctx.addIssue({ code: 'custom', path: ['timeline'], message: `the name ${d.name} is on timeline ${parsed.timeline}` });
    if (d.file !== walBodyFile(d.name, d.encryption)) ctx.addIssue({ code: 'custom', path: ['file'], message: `expected ${walBodyFile(d.name, d.encryption)}` });
    // zstd and age add a little to incompressible data; more than this is not a compressed WAL file.
    if (d.storedSize > d.plainSize + MiB + d.plainSize / 100) {
      ctx.addIssue({ code: 'custom', path: ['storedSize'], message: `${d.storedSize} bytes stored for ${d.plainSize} plain bytes` });
    }
  });

export type WalDoc = z.infer<typeof walDocSchema>;

function validated(body: unknown, label: string): WalDoc {
  const r = walDocSchema.safeParse(body);
  if (!r.success) {
    const version = (body as { version?: unknown } | null)?.version;
    throw new TandemError('integrity', 'WAL_DOC_INVALID', `${label}: signed, but not a valid WAL document (${firstIssue(r.error)})`, {
      hint: typeof version === 'number' && version > 1 ? 'it was written by a newer tandem: upgrade this agent' : undefined,
    });
  }
  return r.data;
}

/**
 * A WAL document's body, once its signature verified, every member checked, and it names the WAL
 * file and site it was found under (a document copied to another name or site is refused: a
 * replayed or moved entry). `label` names it in errors (default: the WAL file and its key).
 */
export function parseWalDoc(raw: Buffer, verifyKey: KeyObject, expect: { site: string; name: string; label?: string }): WalDoc {
  const key = walKeys(expect.site, expect.name).doc;
  const label = expect.label ?? fileLabel(expect.name, key);
  const doc = validated(verifyDocument(raw, verifyKey, label), label);
  if (doc.site !== expect.site || doc.name !== expect.name) {
    throw new TandemError('integrity', 'WAL_MISPLACED', `${label}: a signed doc for ${walKeys(doc.site, doc.name).doc} found under ${key}: replayed or moved`, {
      hint: 'the filestore was tampered with; the document is not used',
    });
  }
  return doc;
}

/** The committed document of a WAL file and its version, or null when there is none. */
async function readDoc(
  fs: Filestore,
  site: string,
  name: string,
  verifyKey: KeyObject,
  signal?: AbortSignal,
): Promise<{ doc: WalDoc; version: string } | null> {
  const key = walKeys(site, name).doc;
  let got;
  try {
    got = await fs.getBuffer(key, { maxBytes: WAL_DOC_MAX_BYTES, signal });
  } catch (err) {
    if (isNotFound(err)) return null;
    throw err;
  }
  return { doc: parseWalDoc(got.body, verifyKey, { site, name, label: fileLabel(name, `${fs.description}/${key}`) }), version: got.info.version };
}

// ---------------------------------------------------------------------------------------------
// Storing (the primary's archive_command)
// ---------------------------------------------------------------------------------------------

export interface StoreWalOptions {
  filestore: Filestore;
  site: string;
  /** The file to store: absolute, or relative to the working directory (PostgreSQL's %p). */
  path: string;
  /** Its WAL file name (PostgreSQL's %f). */
  name: string;
  epoch: number;
  primaryId: string;
  /** The cluster's system id (controlSystemId): a segment of any other cluster is refused. */
  systemId: string;
  /** age recipients; null stores the file unencrypted. */
  recipients: string[] | null;
  signingKey: KeyObject;
  now?: () => Date;
  signal?: AbortSignal;
}

export type StoreWalResult = { status: 'stored' | 'already-stored'; doc: WalDoc };

interface Digest {
  size: number;
  sha256: string;
}

const sha256 = (buf: Buffer): string => createHash('sha256').update(buf).digest('hex');

/** The whole file, read once: what is hashed is what is uploaded. */
async function readWalFile(path: string, name: string): Promise<Buffer> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(path, 'r');
    const st = await fh.stat();
    if (!st.isFile()) throw new TandemError('config', 'WAL_FILE_NOT_REGULAR', `WAL file ${name}: ${path} is not a regular file`);
    if (st.size > WAL_MAX_PLAIN_BYTES) throw tooLarge(name, path, st.size);
    const buf = await fh.readFile();
    if (buf.length > WAL_MAX_PLAIN_BYTES) throw tooLarge(name, path, buf.length);
    return buf;
  } catch (err) {
    if (isTandemError(err)) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new TandemError(code === 'ENOENT' ? 'not-found' : 'permanent', 'WAL_FILE_READ', `WAL file ${name}: cannot read ${path}: ${describeError(err)}`, { cause: err });
  } finally {
    await fh?.close();
  }
}

function tooLarge(name: string, path: string, size: number): TandemError {
  return new TandemError('config', 'WAL_FILE_TOO_LARGE', `WAL file ${name}: ${path} has ${size} bytes, more than the ${WAL_MAX_PLAIN_BYTES} a WAL file may have here`, {
    hint: 'WAL mode supports wal_segment_size up to 64 MB',
  });
}

/**
 * Stores one WAL file: refused unless its name is a WAL file's and (a segment) its header carries
 * the cluster's system id; 'already-stored' when a committed entry holds the same content.
 */
export async function storeWalFile(opts: StoreWalOptions): Promise<StoreWalResult> {
  const { filestore: fs, site, name, signal } = opts;
  const parsed = checkNames(site, name);
  if (!isSystemId(opts.systemId)) {
    throw new TandemError('config', 'WAL_BAD_SYSTEM_ID', `WAL file ${name}: ${JSON.stringify(opts.systemId)} is not a database system identifier`);
  }
  // The caller's own state, checked before anything is uploaded.
  if (!Number.isSafeInteger(opts.epoch) || opts.epoch < 1 || typeof opts.primaryId !== 'string' || opts.primaryId === '') {
    throw new TandemError('internal', 'WAL_BAD_ORIGIN', `WAL file ${name}: epoch ${opts.epoch} and primary id ${JSON.stringify(opts.primaryId)} do not name a primary`);
  }
  signal?.throwIfAborted();
  const path = resolve(opts.path);
  const plain = await readWalFile(path, name);
  if (parsed.kind === 'segment' || parsed.kind === 'partial') {
    let found: string;
    try {
      found = segmentSystemId(plain.subarray(0, LONG_HEADER_BYTES));
    } catch (err) {
      throw new TandemError('integrity', 'WAL_NOT_SEGMENT', `WAL file ${name}: ${path}: ${describeError(err)}`, { cause: err });
    }
    if (found !== opts.systemId) throw foreignSegment(fileLabel(name, path), found, opts.systemId, 'this cluster');
  }
  const file: Digest = { size: plain.length, sha256: sha256(plain) };
  const encryption: WalEncryption = opts.recipients === null ? 'none' : 'age';
  const keys = walKeys(site, name, encryption);
  const docLabel = fileLabel(name, `${fs.description}/${keys.doc}`);
  const verifyKey = createPublicKey(opts.signingKey);

  // Archived before (a crash came between the upload and PostgreSQL noting it): nothing to do when
  // the entry is whole; one whose body is damaged or missing is written again over it.
  let cond: WriteCondition = { ifAbsent: true };
  const existing = await readDoc(fs, site, name, verifyKey, signal);
  if (existing) {
    requireSameContent(existing.doc, file, docLabel, path);
    if (await bodyMatches(fs, keys.body, existing.doc, signal)) return { status: 'already-stored', doc: existing.doc };
    cond = { ifVersion: existing.version };
  }

  const stored = await uploadBody(fs, keys.body, plain, opts.recipients, signal);
  const doc = validated(
    {
      format: 'tandem-wal',
      version: 1,
      site,
      name,
      kind: parsed.kind,
      timeline: parsed.timeline,
      systemId: opts.systemId,
      epoch: opts.epoch,
      primaryId: opts.primaryId,
      archivedAt: (opts.now ?? (() => new Date()))().toISOString(),
      plainSize: file.size,
      plainSha256: file.sha256,
      storedSize: stored.size,
      storedSha256: stored.sha256,
      file: walBodyFile(name, encryption),
      compression: 'zstd',
      encryption,
    } satisfies WalDoc,
    docLabel,
  );
  const signed = signDocument(doc, opts.signingKey);
  faultPoint('wal-body-stored'); // crash tests: the body is up, the doc that commits it is not
  try {
    await fs.writeConditional(keys.doc, signed, cond, { signal });
    faultPoint('wal-doc-written');
    return { status: 'stored', doc };
  } catch (err) {
    if (!isPrecondition(err)) throw err;
  }

  // Another writer committed first. Its entry stands if it holds the same content and its body is
  // the one in the filestore now; if our upload replaced that body, our document goes over its one.
  const theirs = await readDoc(fs, site, name, verifyKey, signal);
  if (!theirs) throw raceError(docLabel, 'its document was removed while this one was written');
  requireSameContent(theirs.doc, file, docLabel, path);
  if (await bodyMatches(fs, keys.body, theirs.doc, signal)) return { status: 'already-stored', doc: theirs.doc };
  if (!(await bodyMatches(fs, keys.body, doc, signal))) throw raceError(docLabel, 'its body was replaced again while this one was written');
  try {
    await fs.writeConditional(keys.doc, signed, { ifVersion: theirs.version }, { signal });
  } catch (err) {
    if (isPrecondition(err)) throw raceError(docLabel, 'its document changed again while this one was written');
    throw err;
  }
  return { status: 'stored', doc };
}

function requireSameContent(doc: WalDoc, file: Digest, label: string, path: string): void {
  if (doc.plainSha256 === file.sha256 && doc.plainSize === file.size) return;
  throw new TandemError(
    'integrity',
    'WAL_ALREADY_DIFFERENT',
    `${label}: already holds a different file of that name (SHA-256 ${doc.plainSha256}, ${doc.plainSize} bytes, system id ${doc.systemId}, ` +
      `archived ${doc.archivedAt} in epoch ${doc.epoch} by ${doc.primaryId}); ${path} has SHA-256 ${file.sha256} (${file.size} bytes). ` +
      'Nothing was uploaded: PostgreSQL keeps the file and retries',
    {
      hint: 'two clusters (or two primaries of one site) archive into the same site: check that this server is the site\'s primary and that its system id is the stored one',
    },
  );
}

function raceError(label: string, what: string): TandemError {
  return new TandemError('transient', 'WAL_STORE_RACE', `${label}: another writer stored this file at the same time and ${what}`, {
    hint: 'PostgreSQL retries the archive command; the retry finds the entry or stores it again',
  });
}

/** Whether the body in the filestore is the one `doc` signed (its size first, then its bytes). */
async function bodyMatches(fs: Filestore, key: string, doc: WalDoc, signal?: AbortSignal): Promise<boolean> {
  let got;
  try {
    got = await fs.get(key, { signal });
  } catch (err) {
    if (isNotFound(err)) return false;
    throw err;
  }
  if (got.info.size !== doc.storedSize) {
    got.body.destroy();
    return false;
  }
  const hash = new HashCounter();
  const limit = new Limit(doc.storedSize, () => new TandemError('integrity', 'WAL_BODY_GREW', `${key}: grew while it was read`));
  try {
    await pipeline([got.body, limit, hash, discard()], { signal });
  } catch (err) {
    if (isTandemError(err) && err.code === 'WAL_BODY_GREW') return false;
    throw err;
  }
  return hash.bytes === doc.storedSize && hash.digest() === doc.storedSha256;
}

/**
 * plain → zstd → age (unless unencrypted) → SHA-256 and size → the filestore, streamed. If either
 * side fails the other is stopped, and both are awaited, so no upload is left running.
 */
async function uploadBody(fs: Filestore, key: string, plain: Buffer, recipients: string[] | null, signal?: AbortSignal): Promise<Digest> {
  const stages: Duplex[] = [zstdCompress({ level: 1 })];
  if (recipients !== null) stages.push(createAgeEncryptStream(recipients));
  const hash = new HashCounter();
  const body = new PassThrough({ highWaterMark: MiB });
  const ac = new AbortController();
  const onAbort = () => ac.abort(signal?.reason);
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    let first: unknown;
    const settle = (p: Promise<unknown>) =>
      p.catch((err: unknown) => {
        first ??= err;
        ac.abort(err);
      });
    await Promise.all([
      settle(pipeline([Readable.from([plain]), ...stages, hash, body], { signal: ac.signal })),
      settle(fs.put(key, body, { signal: ac.signal })),
    ]);
    if (first !== undefined) throw first;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
  return { size: hash.bytes, sha256: hash.digest() };
}

// ---------------------------------------------------------------------------------------------
// Fetching (a standby's restore_command)
// ---------------------------------------------------------------------------------------------

export interface FetchWalOptions {
  filestore: Filestore;
  site: string;
  /** The WAL file name PostgreSQL asks for (%f). */
  name: string;
  verifyKey: KeyObject;
  /** age identities; unused for a file stored unencrypted. */
  identities: string[];
  /** An existing directory of this process (0700): the stored bytes are downloaded here. */
  stagingDir: string;
  /** Where to put the file (PostgreSQL's %p, resolved): written only once it verified. */
  target: string;
  /** Refuse a file of another cluster. */
  expect?: { systemId?: string };
  /**
   * The caller's own checks of the verified document (its epoch against epoch.json, say), run
   * before anything is downloaded: a throw refuses the file, and nothing is written.
   */
  accept?: (doc: WalDoc) => void | Promise<void>;
  signal?: AbortSignal;
}

export type FetchWalResult = { status: 'restored'; doc: WalDoc } | { status: 'missing' };

/**
 * Fetches one WAL file to `target`: 'missing' when the filestore has no committed entry of that
 * name (nothing written); otherwise the file, verified against its signed document, or an error.
 */
export async function fetchWalFile(opts: FetchWalOptions): Promise<FetchWalResult> {
  const { filestore: fs, site, name, signal } = opts;
  const parsed = checkNames(site, name);
  signal?.throwIfAborted();
  const found = await readDoc(fs, site, name, opts.verifyKey, signal);
  if (!found) return { status: 'missing' };
  const { doc } = found;
  const keys = walKeys(site, name, doc.encryption);
  const label = fileLabel(name, `${fs.description}/${keys.body}`);
  if (opts.expect?.systemId !== undefined && doc.systemId !== opts.expect.systemId) {
    throw foreignSegment(label, doc.systemId, opts.expect.systemId, 'this standby\'s cluster');
  }
  await opts.accept?.(doc);

  const staged = join(opts.stagingDir, `${name}.${randomBytes(6).toString('hex')}.stored`);
  const target = resolve(opts.target);
  const tmp = `${target}.tandem-tmp`;
  try {
    await download(fs, keys.body, doc, staged, label, signal);
    await decode(staged, tmp, doc, parsed.kind, opts.identities, label, signal);
    faultPoint('wal-fetch-decoded'); // crash tests: verified beside the target, not renamed yet
    await rename(tmp, target);
    await fsyncDir(dirname(target));
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  } finally {
    await rm(staged, { force: true });
  }
  return { status: 'restored', doc };
}

/** The stored bytes into a new 0600 file, refused at the first byte past the signed size, then checked. */
async function download(fs: Filestore, key: string, doc: WalDoc, file: string, label: string, signal?: AbortSignal): Promise<void> {
  let got;
  try {
    got = await fs.get(key, { signal });
  } catch (err) {
    if (isNotFound(err)) {
      throw new TandemError('integrity', 'WAL_BODY_MISSING', `${label}: the signed document exists, the body it names does not`, {
        hint: 'the filestore lost or had the object removed; the primary stores the file again only if PostgreSQL archives it again',
        cause: err,
      });
    }
    throw err;
  }
  const hash = new HashCounter();
  try {
    const fh = await open(file, OPEN_NEW_FILE, 0o600).catch((err: unknown) => {
      got.body.destroy();
      throw err;
    });
    const limit = new Limit(doc.storedSize, (n) =>
      new TandemError('integrity', 'WAL_BODY_MISMATCH', `${label}: the filestore sent more than ${doc.storedSize} bytes (${n} so far), the size the signed document says (SHA-256 ${doc.storedSha256}): replaced or tampered with`),
    );
    await pipeline([got.body, limit, hash, fh.createWriteStream({ highWaterMark: MiB })], { signal });
  } catch (err) {
    throw explain(err, label);
  }
  if (hash.bytes !== doc.storedSize || hash.digest() !== doc.storedSha256) {
    throw new TandemError(
      'integrity',
      'WAL_BODY_MISMATCH',
      `${label}: SHA-256 of the stored bytes is ${hash.digest()} (${hash.bytes} bytes), the signed document says ${doc.storedSha256} (${doc.storedSize} bytes): corrupt or tampered with`,
      { hint: 'nothing of it was decrypted or written to the target' },
    );
  }
}

/**
 * Verified stored bytes → age → zstd, which writes the plain bytes to `tmp` itself under a file
 * size limit of the signed plain size; then the written file's size, SHA-256 and (a segment) system
 * id are checked and it is fsynced. The caller renames it into place.
 */
async function decode(staged: string, tmp: string, doc: WalDoc, kind: WalKind, identities: string[], label: string, signal?: AbortSignal): Promise<void> {
  await rm(tmp, { force: true }); // left by an earlier attempt that crashed
  const out = await open(tmp, OPEN_NEW_FILE_RW, 0o600);
  try {
    await out.chmod(0o600);
    const stages: Array<Readable | Duplex | Writable> = [createReadStream(staged, { highWaterMark: MiB })];
    if (doc.encryption === 'age') stages.push(createAgeDecryptStream(identities, { label }));
    const zstd = zstdDecompress({ toFd: out.fd, maxBytes: doc.plainSize });
    stages.push(zstd, discard());
    try {
      await pipeline(stages, { signal });
    } catch (err) {
      if (zstd.exitStatus?.signal === 'SIGXFSZ') throw plainSizeError(label, `more than ${doc.plainSize}`, doc.plainSize);
      throw explain(err, label);
    }
    const size = (await out.stat()).size;
    if (size !== doc.plainSize) throw plainSizeError(label, String(size), doc.plainSize);
    const plain = await readAll(out, size);
    const digest = sha256(plain);
    if (digest !== doc.plainSha256) {
      throw new TandemError(
        'integrity',
        'WAL_PLAIN_MISMATCH',
        `${label}: SHA-256 of the restored bytes is ${digest}, the signed document says ${doc.plainSha256}`,
        { hint: 'the entry was not made by a tandem primary or was made by a faulty one' },
      );
    }
    if (kind === 'segment' || kind === 'partial') {
      let found: string;
      try {
        found = segmentSystemId(plain.subarray(0, LONG_HEADER_BYTES));
      } catch (err) {
        throw new TandemError('integrity', 'WAL_NOT_SEGMENT', `${label}: ${describeError(err)}`, { cause: err });
      }
      if (found !== doc.systemId) throw foreignSegment(label, found, doc.systemId, 'its signed document');
    }
    await out.sync();
  } finally {
    await out.close();
  }
}

async function readAll(fh: FileHandle, size: number): Promise<Buffer> {
  const buf = Buffer.alloc(size);
  let at = 0;
  while (at < size) {
    const { bytesRead } = await fh.read(buf, at, size - at, at);
    if (bytesRead === 0) break;
    at += bytesRead;
  }
  return buf.subarray(0, at);
}

function plainSizeError(label: string, bytes: string, signed: number): TandemError {
  return new TandemError('integrity', 'WAL_PLAIN_SIZE', `${label}: decompresses to ${bytes} bytes, the signed document says ${signed}`, {
    hint: 'the entry was not made by a tandem primary or was made by a faulty one',
  });
}

function foreignSegment(label: string, found: string, wanted: string, whose: string): TandemError {
  return new TandemError('integrity', 'WAL_FOREIGN_SEGMENT', `${label}: belongs to the cluster with system id ${found}, ${whose} has system id ${wanted}`, {
    hint: 'the WAL of another cluster must never be replayed: check that the site, the filestore and the data directory belong together',
  });
}

/** Makes every failure name the WAL file and its key; the wrong-key case gets the operator's wording. */
function explain(err: unknown, label: string): unknown {
  if (isTandemError(err)) {
    if (err.code === 'AGE_NO_IDENTITY_MATCH') {
      return new TandemError('integrity', err.code, `${label}: this standby's key cannot decrypt it: encrypted for another recipient?`, { hint: err.hint, cause: err });
    }
    return err.message.includes(label) ? err : new TandemError(err.kind, err.code, `${label}: ${err.message}`, { hint: err.hint, cause: err });
  }
  if ((err as Error | undefined)?.name === 'AbortError') return err;
  const kind = typeof (err as NodeJS.ErrnoException | undefined)?.code === 'string' ? 'permanent' : 'internal';
  return new TandemError(kind, 'WAL_STREAM', `${label}: ${describeError(err)}`, { cause: err });
}

/** A counted pass-through that fails at the first byte past `limit`. */
class Limit extends Transform {
  bytes = 0;
  readonly #limit: number;
  readonly #over: (bytes: number) => Error;

  constructor(limit: number, over: (bytes: number) => Error) {
    super({ highWaterMark: MiB });
    this.#limit = limit;
    this.#over = over;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.#limit) return cb(this.#over(this.bytes));
    cb(null, chunk);
  }
}

/** The end of a pipeline whose data is not needed (only counted or hashed on the way). */
const discard = (): Writable =>
  new Writable({
    write(_chunk, _enc, cb) {
      cb();
    },
  });
