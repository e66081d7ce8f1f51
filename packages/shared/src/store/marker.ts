import { readdir, stat } from 'node:fs/promises';
import { z } from 'zod';
import { TandemError, isNotFound, isPrecondition, isTandemError } from '../errors.js';
import { DirFilestore } from '../filestore/dir-filestore.js';
import type { Filestore } from '../filestore/filestore.js';
import { firstIssue, isoTime } from './fields.js';

/**
 * tandem-filestore.json at the filestore's root (beside the sites' directories): the mark that a
 * filestore exists and is tandem's. `tandem-primary init` writes it (create-only, as `restic init`
 * and pgBackRest's `stanza-create` make a repository); every command and daemon that uses a
 * filestore reads it first and refuses a filestore without it. Nothing else creates a filestore:
 * a directory store never makes its own directory, so a mount point whose file system is not
 * mounted, or a mistyped URL, is refused instead of filled on whatever disk is underneath.
 *
 *   {"format": 1, "tool": "tandem", "createdAt": "2026-11-22T03:00:00.000Z"}
 *
 * Unsigned: it says where a filestore is, not what may be trusted in it (latest.json and the
 * manifests are signed). A newer tandem that changes its meaning raises `format`; members it adds
 * without doing so are ignored here.
 */
export const FILESTORE_MARKER_KEY = 'tandem-filestore.json';
export const FILESTORE_MARKER_FORMAT = 1;
/** A real marker is under 100 bytes; more is not read. */
export const FILESTORE_MARKER_MAX_BYTES = 4096;

/** The command that creates a filestore, as hints name it. */
export const INIT_FILESTORE_COMMAND = 'tandem-primary init --filestore --config FILE';

export const filestoreMarkerSchema = z.object({
  format: z.literal(FILESTORE_MARKER_FORMAT),
  tool: z.literal('tandem'),
  createdAt: isoTime,
});
export type FilestoreMarker = z.infer<typeof filestoreMarkerSchema>;

export function encodeFilestoreMarker(marker: FilestoreMarker): Buffer {
  return Buffer.from(`${JSON.stringify({ format: marker.format, tool: marker.tool, createdAt: marker.createdAt }, null, 2)}\n`, 'utf8');
}

function invalidMarker(label: string, why: string, opts: { hint?: string; cause?: unknown } = {}): TandemError {
  return new TandemError('config', 'STORE_MARKER_INVALID', `${label} is not a tandem filestore marker: ${why}`, {
    hint:
      opts.hint ??
      `this filestore was not made by tandem, or its marker was damaged or replaced: check filestore.url; if the filestore is tandem's, remove ${FILESTORE_MARKER_KEY} and run \`${INIT_FILESTORE_COMMAND}\` to write it again`,
    cause: opts.cause,
  });
}

/** Checks marker bytes; `label` names the object in errors (e.g. "file:///backups/tandem-filestore.json"). */
export function parseFilestoreMarker(raw: Buffer, label: string): FilestoreMarker {
  let value: unknown;
  try {
    value = JSON.parse(raw.toString('utf8'));
  } catch {
    throw invalidMarker(label, 'not valid JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalidMarker(label, 'not a JSON object');
  const doc = value as Record<string, unknown>;
  if (doc.tool !== 'tandem') throw invalidMarker(label, `"tool" is ${JSON.stringify(doc.tool) ?? 'missing'}, not "tandem"`);
  if (typeof doc.format === 'number' && Number.isInteger(doc.format) && doc.format > FILESTORE_MARKER_FORMAT) {
    throw invalidMarker(label, `format ${doc.format} is newer than this tandem knows (${FILESTORE_MARKER_FORMAT})`, {
      hint: 'a newer tandem made this filestore: upgrade tandem on this server',
    });
  }
  const r = filestoreMarkerSchema.safeParse(value);
  if (!r.success) throw invalidMarker(label, firstIssue(r.error, '(document)'));
  return r.data;
}

/** The marker's place for messages: the filestore's description with the key after its path. */
function labelOf(fs: Filestore): string {
  const q = fs.description.search(/[? ]/);
  const [base, rest] = q < 0 ? [fs.description, ''] : [fs.description.slice(0, q), fs.description.slice(q)];
  return `${base.endsWith('/') ? base : `${base}/`}${FILESTORE_MARKER_KEY}${rest}`;
}

/**
 * The filestore's marker; undefined when there is none (nor, for a directory store, the directory).
 * A marker that is not tandem's (not JSON, another tool's, too large) is a TandemError
 * (STORE_MARKER_INVALID); a filestore that cannot be read throws the filestore's own error.
 */
export async function readFilestoreMarker(fs: Filestore, opts: { signal?: AbortSignal } = {}): Promise<FilestoreMarker | undefined> {
  let raw: Buffer;
  try {
    raw = (await fs.getBuffer(FILESTORE_MARKER_KEY, { maxBytes: FILESTORE_MARKER_MAX_BYTES, signal: opts.signal })).body;
  } catch (err) {
    if (isNotFound(err)) return undefined;
    if (isTandemError(err) && err.code === 'FILESTORE_DOC_TOO_LARGE') {
      throw invalidMarker(labelOf(fs), `larger than the ${FILESTORE_MARKER_MAX_BYTES} bytes a marker may have`, { cause: err });
    }
    throw err;
  }
  return parseFilestoreMarker(raw, labelOf(fs));
}

/** What is at a directory store's root, for the refusal's message. */
async function directoryState(root: string): Promise<'missing' | 'not-a-directory' | 'empty' | 'not-empty' | 'unknown'> {
  try {
    if (!(await stat(root)).isDirectory()) return 'not-a-directory';
    return (await readdir(root)).length === 0 ? 'empty' : 'not-empty';
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : 'unknown';
  }
}

/** Why `fs` is not an initialised filestore (it has no marker), in words. */
async function whyUninitialised(fs: Filestore): Promise<string> {
  if (!(fs instanceof DirFilestore)) return `there is no ${labelOf(fs)}`;
  switch (await directoryState(fs.root)) {
    case 'missing':
      return `the directory ${fs.root} does not exist (a missing directory is never created on use: it may be a file system that is not mounted)`;
    case 'not-a-directory':
      return `${fs.root} is not a directory`;
    case 'empty':
      return `the directory ${fs.root} is empty, without ${FILESTORE_MARKER_KEY} (a mount point whose file system is not mounted looks like this)`;
    default:
      return `the directory ${fs.root} holds no ${FILESTORE_MARKER_KEY}`;
  }
}

/**
 * The filestore's marker, or a TandemError (kind 'config', STORE_UNINITIALISED) naming `url` (the
 * filestore URL as configured), saying what is there instead (for a directory: whether it exists),
 * and how to create the filestore. Errors reading it, and an invalid marker, are thrown as they are.
 */
export async function requireFilestoreMarker(fs: Filestore, context: { url: string }, opts: { signal?: AbortSignal } = {}): Promise<FilestoreMarker> {
  const marker = await readFilestoreMarker(fs, opts);
  if (marker !== undefined) return marker;
  throw new TandemError('config', 'STORE_UNINITIALISED', `filestore ${context.url} is not an initialised tandem filestore: ${await whyUninitialised(fs)}`, {
    hint:
      `create it with \`${INIT_FILESTORE_COMMAND}\` (FILE: the primary's config, which names this filestore); ` +
      'if it exists already, check filestore.url and that its file system is mounted (a filestore made by an earlier tandem gets its marker the same way)',
  });
}

/**
 * The filestore answered, and it is not an initialised tandem filestore: no marker
 * (STORE_UNINITIALISED) or not tandem's (STORE_MARKER_INVALID); not a filestore that cannot be read.
 */
export const isFilestoreMarkerRefusal = (err: unknown): err is TandemError =>
  isTandemError(err) && (err.code === 'STORE_UNINITIALISED' || err.code === 'STORE_MARKER_INVALID');

export interface WrittenMarker {
  marker: FilestoreMarker;
  /** False when the filestore had its marker already (nothing was written). */
  created: boolean;
}

/**
 * Makes `fs` a tandem filestore: writes its marker, create-only (an existing marker is never
 * replaced; one that is there already is returned, with `created: false`; an invalid one is refused).
 * For a directory store this is the one step that creates the directory itself (0700); its parent
 * must exist. An S3 bucket must exist (the marker goes at the URL's prefix).
 */
export async function writeFilestoreMarker(fs: Filestore, opts: { now?: Date; signal?: AbortSignal } = {}): Promise<WrittenMarker> {
  const existing = await readFilestoreMarker(fs, opts);
  if (existing !== undefined) return { marker: existing, created: false };
  if (fs instanceof DirFilestore) await fs.createRoot();
  const marker: FilestoreMarker = { format: FILESTORE_MARKER_FORMAT, tool: 'tandem', createdAt: (opts.now ?? new Date()).toISOString() };
  try {
    await fs.writeConditional(FILESTORE_MARKER_KEY, encodeFilestoreMarker(marker), { ifAbsent: true }, { signal: opts.signal });
  } catch (err) {
    // Another init got there first: theirs stands.
    if (!isPrecondition(err)) throw err;
    const theirs = await readFilestoreMarker(fs, opts);
    if (theirs === undefined) throw err;
    return { marker: theirs, created: false };
  }
  return { marker, created: true };
}
