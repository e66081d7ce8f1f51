import type { KeyObject } from 'node:crypto';
import { promisify } from 'node:util';
import { deflateRaw, inflateRawSync } from 'node:zlib';
import { z } from 'zod';
import { createAgeDecryptStream, createAgeEncryptStream } from '../crypto/age/index.js';
import { TandemError } from '../errors.js';
import { signDocument, verifyDocument } from '../store/signed-doc.js';
import { runTransform } from './pack.js';

/**
 * A files delta: the new and changed files the primary daemon saw settle since the set it builds on
 * (or since the delta before), so that a file uploaded to the site reaches the standbys in seconds,
 * not with the next set. Deletions wait for the next set (the site's database may still refer to
 * the file until then).
 *
 * `<site>/deltas/<set-id>/<n>.json`, n = 1, 2, ...: a signed document whose payload is a files index
 * (cas/files-index.ts; header set id `<set-id>+<n>`) holding the changed entries with every
 * directory above them, deflated and encrypted like the set's index (to the site's recipients and
 * the files key). The packs it names are uploaded before it; latest.json names the newest delta
 * (its `files.delta`) after it: a standby reads latest.json as ever and GETs the deltas by name.
 */
export const DELTA_FORMAT = 'tandem-files-delta';
/** The payload's plain bytes at most; a larger batch of changes is cut into several deltas. */
export const MAX_DELTA_PLAIN = 4 * 1024 * 1024;
const deflateRawAsync = promisify(deflateRaw);

export const deltaDocSchema = z.strictObject({
  format: z.literal(DELTA_FORMAT),
  version: z.literal(1),
  site: z.string().min(1),
  setId: z.string().min(1),
  n: z.number().int().positive(),
  epoch: z.number().int().positive(),
  committedAt: z.iso.datetime(),
  /** Changed entries (files and links), for logs and status. */
  entries: z.number().int().nonnegative(),
  encryption: z.enum(['age', 'none']),
  /** base64 of the (encrypted) deflated index lines. */
  payload: z.string(),
});
export type DeltaDoc = z.infer<typeof deltaDocSchema>;

/** The header set id of a delta's index. */
export const deltaIndexId = (setId: string, n: number): string => `${setId}+${n}`;

export async function sealDelta(
  doc: Omit<DeltaDoc, 'format' | 'version' | 'payload' | 'encryption'>,
  plain: Buffer,
  o: { recipients: string[] | null; signingKey: KeyObject },
): Promise<Buffer> {
  const deflated = await deflateRawAsync(plain, { level: 6 });
  const stored = o.recipients ? await runTransform(createAgeEncryptStream(o.recipients), deflated) : deflated;
  const full: DeltaDoc = { format: DELTA_FORMAT, version: 1, ...doc, encryption: o.recipients ? 'age' : 'none', payload: stored.toString('base64') };
  return signDocument(deltaDocSchema.parse(full), o.signingKey);
}

/** A delta document, by signature, and what it must be (site, set, number). */
export function verifyDelta(raw: Buffer, key: KeyObject, want: { site: string; setId: string; n: number }, label: string): DeltaDoc {
  const r = deltaDocSchema.safeParse(verifyDocument(raw, key, label));
  if (!r.success) throw new TandemError('integrity', 'DOC_INVALID', `${label}: signed, but not a valid files delta (${r.error.issues[0]?.path.join('.')}: ${r.error.issues[0]?.message})`);
  const d = r.data;
  if (d.site !== want.site || d.setId !== want.setId || d.n !== want.n) {
    throw new TandemError('integrity', 'DELTA_MISPLACED', `${label}: it is delta ${d.n} of set ${d.setId} of site ${JSON.stringify(d.site)}, stored where delta ${want.n} of set ${want.setId} of ${JSON.stringify(want.site)} belongs (replayed or moved)`);
  }
  return d;
}

/** The plain index lines of a verified delta. */
export async function openDelta(d: DeltaDoc, identities: string[], label: string): Promise<Buffer> {
  const stored = Buffer.from(d.payload, 'base64');
  let deflated: Buffer;
  try {
    deflated = d.encryption === 'age' ? await runTransform(createAgeDecryptStream(identities, { label }), stored) : stored;
    return inflateRawSync(deflated, { maxOutputLength: MAX_DELTA_PLAIN });
  } catch (err) {
    throw new TandemError('integrity', 'DELTA_UNREADABLE', `${label}: signed, but its payload cannot be decrypted and inflated (${(err as Error).message})`, { cause: err });
  }
}
