/**
 * Content objects (files as content objects, cas/) for the scenario tests: the packs a set's files
 * index lists and the files that use them, read through the filestore as the agents see it, and a
 * tamperer that swaps, alters, removes, truncates or replaces one object and puts it back.
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import {
  filesKeyFromIdentity,
  generateAgeKeyPair,
  loadFilesKeyFile,
  loadIdentities,
  pageLoader,
  objectKey,
  readFilesIndex,
  sealPack,
  objectId,
  type FileEntry,
  type PackInfo,
} from '@tandem/shared';
import { readPlain, type StandbySite } from './standby-helpers.js';

/** What a set's files index lists: its packs (by ordinal: content and pages), its files, and which packs hold its pages. */
export interface IndexContents {
  packs: PackInfo[];
  files: FileEntry[];
  /** Ordinals of the packs that hold the index's pages. */
  pagePacks: Set<number>;
  /** The pages, each as [pack ordinal, offset, length, id]. */
  pages: Array<[number, number, number, string]>;
}

/** The files index of a set, read (and checked) with the site's keys, its pages loaded from the filestore. */
export async function indexContents(s: StandbySite, setId: string): Promise<IndexContents> {
  const plain = await readPlain(s, setId, 'files');
  const packs: PackInfo[] = [];
  const files: FileEntry[] = [];
  const pagePacks = new Set<number>();
  const pageRefs: IndexContents['pages'] = [];
  const fs = s.openStore();
  try {
    const pages = pageLoader(fs, s.site, { identities: loadIdentities(s.keys.identityFile), hmacKey: loadFilesKeyFile(s.keys.filesKeyFile).hmacKey, label: `set ${setId}` });
    const onPage = (pack: number, offset: number, length: number, id: string) => {
      pagePacks.add(pack);
      pageRefs.push([pack, offset, length, id]);
    };
    for await (const e of readFilesIndex(Readable.from([plain]), { label: `set ${setId}`, site: s.site, setId, maxEntries: 1_000_000, pages, onPage }, packs)) {
      if (e.t === 'f') files.push(e);
    }
  } finally {
    await fs.close();
  }
  return { packs, files, pagePacks, pages: pageRefs };
}

/** The packs of an index that hold file content (not its pages). */
export const contentPacks = (c: IndexContents): PackInfo[] => c.packs.filter((_, i) => !c.pagePacks.has(i));

/** The files of an index that use a pack. */
export const filesUsing = (c: IndexContents, id: string): string[] => {
  const ords = new Set(c.packs.flatMap((p, i) => (p.id === id ? [i] : [])));
  return c.files.filter((f) => f.b.some((b) => ords.has(b[0]))).map((f) => f.p);
};

/** Packs of file content of `after` that `before` does not list (pages: newPagePacks). */
export const newPacks = (before: IndexContents, after: IndexContents): PackInfo[] => {
  const had = new Set(before.packs.map((p) => p.id));
  return contentPacks(after).filter((p) => !had.has(p.id));
};

/** Packs of pages of `after` that `before` does not list. */
export const newPagePacks = (before: IndexContents, after: IndexContents): PackInfo[] => {
  const had = new Set(before.packs.map((p) => p.id));
  return after.packs.filter((p, i) => after.pagePacks.has(i) && !had.has(p.id));
};

const PACK_READ_MAX = 64 * 1024 * 1024;

export async function readObject(s: StandbySite, id: string): Promise<Buffer> {
  const fs = s.openStore();
  try {
    return (await fs.getBuffer(objectKey(s.site, id), { maxBytes: PACK_READ_MAX })).body;
  } finally {
    await fs.close();
  }
}

export async function writeObject(s: StandbySite, id: string, body: Buffer): Promise<void> {
  const fs = s.openStore();
  try {
    await fs.putBuffer(objectKey(s.site, id), body);
  } finally {
    await fs.close();
  }
}

export async function deleteObject(s: StandbySite, id: string): Promise<void> {
  const fs = s.openStore();
  try {
    await fs.delete(objectKey(s.site, id));
  } finally {
    await fs.close();
  }
}

/**
 * A pack of another site: sealed to another site's recipient, its blobs named under another files
 * key, random (incompressible) content; of `size` stored bytes when given, so that only its
 * SHA-256 can tell it from the object it replaces.
 */
export async function foreignPack(size?: number): Promise<Buffer> {
  const recipient = generateAgeKeyPair().recipient;
  const filesKey = filesKeyFromIdentity(generateAgeKeyPair().identity, 'another site');
  const seal = async (plain: number) => {
    const data = randomBytes(Math.max(1, plain));
    return (await sealPack([{ id: objectId(filesKey.hmacKey, data), data }], { hmacKey: filesKey.hmacKey, recipients: [recipient] })).stored;
  };
  if (size === undefined) return seal(100_000);
  // age adds a fixed header and 16 bytes per 64 KiB chunk: a few tries meet the size exactly.
  let plain = size - 250;
  for (let attempt = 0; attempt < 10; attempt++) {
    const stored = await seal(plain);
    if (stored.length === size) return stored;
    plain += size - stored.length;
  }
  throw new Error(`no foreign pack of exactly ${size} bytes`);
}

export type Tamper = 'swapped' | 'altered' | 'missing' | 'foreign' | 'truncated';

/**
 * Damages the object `id` as `how` says (`other`: the bytes of another object of the site, for
 * 'swapped'); returns a function that puts the original back.
 */
export async function tamperObject(s: StandbySite, id: string, how: Tamper, other?: Buffer): Promise<() => Promise<void>> {
  const original = await readObject(s, id);
  switch (how) {
    case 'swapped':
      if (!other) throw new Error('swapped: the bytes of another object are needed');
      await writeObject(s, id, other);
      break;
    case 'altered': {
      const b = Buffer.from(original);
      b[Math.floor(b.length / 2)]! ^= 0x01;
      await writeObject(s, id, b);
      break;
    }
    case 'missing':
      await deleteObject(s, id);
      break;
    case 'foreign':
      await writeObject(s, id, await foreignPack(original.length));
      break;
    case 'truncated':
      await writeObject(s, id, original.subarray(0, Math.floor(original.length / 2)));
      break;
  }
  return () => writeObject(s, id, original);
}
