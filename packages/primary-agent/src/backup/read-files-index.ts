import { createHash } from 'node:crypto';
import { PassThrough, Readable, type Duplex } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  TandemError,
  createAgeDecryptStream,
  isNotFound,
  layout,
  pageLoader,
  readFilesIndex,
  zstdDecompress,
  type ArtifactEntry,
  type FilesKey,
  type Filestore,
  type Manifest,
  type PackInfo,
  type PageLoader,
  type TreeEntry,
} from '@tandem/shared';

/** The largest files index the primary reads back (its cache, garbage collection, storage listing). */
export const MAX_READ_INDEX = 256 * 1024 * 1024;

/** The files index entry of a verified manifest, or null when its files are a tar. */
export const filesIndexEntry = (m: Manifest): ArtifactEntry | null => m.artifacts.find((a) => a.name === 'files' && a.kind === 'files-index') ?? null;

/**
 * The plain files index of a set whose manifest the caller verified: the stored bytes are read
 * (at most their signed size, at most MAX_READ_INDEX) and must match the signed size and SHA-256
 * before a byte is decrypted, with the files key, which every index is also encrypted to.
 */
export async function readStoredFilesIndex(fs: Filestore, manifest: Manifest, entry: ArtifactEntry, filesKey: FilesKey, signal?: AbortSignal): Promise<Readable> {
  const label = `set ${manifest.setId}: files index`;
  if (entry.storedSize > MAX_READ_INDEX) {
    throw new TandemError('permanent', 'INDEX_TOO_LARGE', `${label} is ${entry.storedSize} bytes, more than the ${MAX_READ_INDEX} the primary reads back`);
  }
  let got;
  try {
    got = await fs.get(layout.artifact(manifest.site, manifest.setId, entry.file), { signal });
  } catch (err) {
    if (isNotFound(err)) throw new TandemError('integrity', 'ARTIFACT_MISSING', `${label} is missing from ${fs.description}`, { cause: err });
    throw err;
  }
  const pieces: Buffer[] = [];
  let n = 0;
  for await (const c of got.body as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > entry.storedSize) {
      got.body.destroy();
      break;
    }
    pieces.push(c);
  }
  const stored = Buffer.concat(pieces);
  if (n !== entry.storedSize || createHash('sha256').update(stored).digest('hex') !== entry.storedSha256) {
    throw new TandemError('integrity', 'ARTIFACT_CHECKSUM', `${label} does not match the size and SHA-256 its signed manifest lists: altered or replaced in ${fs.description}`);
  }
  const out = new PassThrough();
  const stages: Duplex[] = [...(entry.encryption === 'age' ? [createAgeDecryptStream([filesKey.identity], { label })] : []), zstdDecompress()];
  pipeline([Readable.from([stored]), ...stages, out]).catch((err: unknown) => out.destroy(err as Error));
  return out;
}

/**
 * The pages of a set's index, read with the files key (pages are encrypted to it as well as to the
 * site's recipients), each pack checked against its signed SHA-256 and each page against its id.
 */
export function setPageLoader(fs: Filestore, manifest: Manifest, entry: ArtifactEntry, filesKey: FilesKey, signal?: AbortSignal): PageLoader {
  return pageLoader(fs, manifest.site, {
    identities: entry.encryption === 'age' ? [filesKey.identity] : null,
    hmacKey: filesKey.hmacKey,
    label: `set ${manifest.setId}: files index`,
    signal,
  });
}

/** Every pack (of content and of pages) and entry of a set's files index, checked as a standby checks it. */
export async function readSetFilesIndex(
  fs: Filestore,
  manifest: Manifest,
  filesKey: FilesKey,
  onEntry?: (e: TreeEntry, packs: PackInfo[]) => void,
  signal?: AbortSignal,
): Promise<PackInfo[] | null> {
  const entry = filesIndexEntry(manifest);
  if (entry === null) return null;
  const packs: PackInfo[] = [];
  const plain = await readStoredFilesIndex(fs, manifest, entry, filesKey, signal);
  const pages = setPageLoader(fs, manifest, entry, filesKey, signal);
  const gen = readFilesIndex(plain, { label: `set ${manifest.setId}: files index`, site: manifest.site, setId: manifest.setId, maxEntries: Number.MAX_SAFE_INTEGER, pages }, packs);
  for await (const e of gen) onEntry?.(e, packs);
  return packs;
}
