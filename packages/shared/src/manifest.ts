import type { KeyObject } from 'node:crypto';
import { z } from 'zod';
import { chunksProblem, storedChunksSchema } from './chunks.js';
import { TandemError } from './errors.js';
import { ARTIFACT_NAMES } from './store/layout.js';
import { signDocument, verifyDocument } from './store/signed-doc.js';

/**
 * The manifest lists a set's artifacts with the size and SHA-256 of their stored (encrypted) bytes.
 * Uploading it commits the set: a set without a valid manifest does not exist for anyone.
 */
export const MANIFEST_VERSION = 3;
/**
 * Version 2: the files artifact may be a files index (kind `files-index`, cas/files-index.ts) whose
 * files are content objects under <site>/objects/. A set without one is still written as version 1,
 * which every earlier standby reads.
 * Version 3: WAL mode (database.mode "wal"): the db artifact is a base backup of the site's cluster
 * (kind `postgres-base`: pg_basebackup's tar, its backup_manifest and the WAL it needs inside), and
 * the database section names the cluster (system id) and where the backup starts. Written only for
 * such sets, so a standby too old for WAL mode refuses them instead of misreading them.
 */

const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/);
const isoTime = z.iso.datetime();

export const artifactEntrySchema = z.strictObject({
  name: z.enum(ARTIFACT_NAMES),
  kind: z.enum(['postgres-custom', 'postgres-base', 'postgres-meta', 'tar', 'files-index']),
  file: z.string().regex(/^[a-z0-9.]+$/),
  storedSize: z.number().int().nonnegative(),
  storedSha256: sha256Hex,
  plainSize: z.number().int().nonnegative(),
  /** "none" only for an archive whose content did not compress (media): see the primary's compressibility probe. */
  compression: z.enum(['zstd', 'none']),
  encryption: z.enum(['age', 'none']),
  /** Signed digests of the stored bytes piece by piece, so a standby can use them as they download (chunks.ts). */
  chunks: storedChunksSchema.optional(),
}).superRefine((e, ctx) => {
  const problem = e.chunks && chunksProblem(e.chunks, e.storedSize);
  if (problem) ctx.addIssue({ code: 'custom', path: ['chunks'], message: problem });
  if (e.kind === 'postgres-base' && e.name !== 'db') ctx.addIssue({ code: 'custom', path: ['kind'], message: 'only the db artifact may be a base backup' });
  if (e.kind === 'files-index' && e.name !== 'files') ctx.addIssue({ code: 'custom', path: ['kind'], message: 'only the files artifact may be a files index' });
  if (e.compression === 'none' && e.kind !== 'tar') ctx.addIssue({ code: 'custom', path: ['compression'], message: 'only an archive may be stored uncompressed' });
});

export const manifestSchema = z.strictObject({
  format: z.literal('tandem-manifest'),
  version: z.union([z.literal(1), z.literal(2), z.literal(MANIFEST_VERSION)]),
  setId: z.string().min(1),
  site: z.string().min(1),
  epoch: z.number().int().positive(),
  seq: z.number().int().positive(),
  createdAt: isoTime,
  completedAt: isoTime,
  primaryHost: z.string(),
  toolVersion: z.string(),
  /** schema: the set carries this schema of the database (database.schema), not the whole database. */
  /**
   * WAL mode adds mode "wal", the cluster's system id (decimal: every WAL file a standby replays on
   * top of this set must carry it), and the base backup's first WAL position and timeline.
   */
  database: z.strictObject({
    name: z.string(),
    serverVersion: z.string(),
    schema: z.string().optional(),
    mode: z.enum(['dump', 'wal']).optional(),
    systemId: z.string().regex(/^[0-9]{1,20}$/).optional(),
    startLsn: z.string().regex(/^[0-9A-F]{1,8}\/[0-9A-F]{1,8}$/).optional(),
    timeline: z.number().int().positive().optional(),
    /** The WAL file the base backup starts in: WAL before it is not needed to restore this set. */
    startWalFile: z.string().regex(/^[0-9A-F]{24}$/).optional(),
  }),
  encryption: z.strictObject({ scheme: z.enum(['age-x25519', 'none']), recipients: z.array(z.string()) }),
  artifacts: z.array(artifactEntrySchema),
}).superRefine((m, ctx) => {
  if (m.version === 1 && m.artifacts.some((a) => a.kind === 'files-index')) ctx.addIssue({ code: 'custom', path: ['version'], message: 'a files index needs manifest version 2' });
  const base = m.artifacts.some((a) => a.kind === 'postgres-base');
  const wal = m.database.mode === 'wal';
  if ((base || wal) && m.version !== 3) ctx.addIssue({ code: 'custom', path: ['version'], message: 'a WAL-mode set needs manifest version 3' });
  if (base !== wal) ctx.addIssue({ code: 'custom', path: ['database', 'mode'], message: 'a base backup and database.mode "wal" go together' });
  if (wal && (m.database.systemId === undefined || m.database.timeline === undefined || m.database.startLsn === undefined || m.database.startWalFile === undefined)) {
    ctx.addIssue({ code: 'custom', path: ['database'], message: 'a WAL-mode set names its cluster: systemId, timeline, startLsn and startWalFile' });
  }
});

export type ArtifactEntry = z.infer<typeof artifactEntrySchema>;
export type Manifest = z.infer<typeof manifestSchema>;

/** latest.json: the signed pointer to the newest committed set. */
export const latestSchema = z.strictObject({
  format: z.literal('tandem-latest'),
  version: z.literal(1),
  site: z.string(),
  setId: z.string(),
  epoch: z.number().int().positive(),
  seq: z.number().int().positive(),
  createdAt: isoTime,
  committedAt: isoTime,
  manifestSha256: sha256Hex,
  /**
   * Files as content objects, with the primary daemon watching them: the newest files delta on top
   * of this set (cas/delta.ts), 1, 2, ... A standby that applied the set applies the deltas up to it.
   */
  files: z.strictObject({ delta: z.number().int().positive(), committedAt: isoTime }).optional(),
});
export type LatestPointer = z.infer<typeof latestSchema>;

function validated<S extends z.ZodType>(schema: S, body: unknown, label: string): z.infer<S> {
  const r = schema.safeParse(body);
  if (!r.success) {
    const first = r.error.issues[0];
    const where = first ? `${first.path.join('.') || '(top level)'}: ${first.message}` : 'invalid';
    const version = (body as { version?: unknown }).version;
    const hint =
      typeof version === 'number' && version > MANIFEST_VERSION
        ? 'it was written by a newer tandem: upgrade this agent'
        : undefined;
    throw new TandemError('integrity', 'DOC_INVALID', `${label}: signed, but not a valid document (${where})`, { hint });
  }
  return r.data;
}

export const signManifest = (m: Manifest, key: KeyObject): Buffer => signDocument(validated(manifestSchema, m, 'manifest'), key);
export const signLatest = (p: LatestPointer, key: KeyObject): Buffer => signDocument(validated(latestSchema, p, 'latest.json'), key);

export function verifyManifest(raw: Buffer, key: KeyObject, label: string): Manifest {
  return validated(manifestSchema, verifyDocument(raw, key, label), label);
}

export function verifyLatest(raw: Buffer, key: KeyObject, label: string): LatestPointer {
  return validated(latestSchema, verifyDocument(raw, key, label), label);
}
