/**
 * Publish a set whose named artifacts are given as already-sealed (zstd + age) stored bytes (for
 * artifacts too large to pass as plaintext), signed with the site's key; the rest is copied from a
 * base set.
 */
import { artifactFileName, chunksOf, layout, loadSigningKeyFile, signLatest, signManifest, type ArtifactName, type Manifest } from '@tandem/shared';
import { nextForgedSet, sha256, type StandbySite } from '../../support/standby-helpers.js';

export async function forgeStored(s: StandbySite, baseSetId: string, sealed: Partial<Record<ArtifactName, { stored: Buffer; plainSize: number }>>): Promise<string> {
  const { fs, base, setId, seq, created } = await nextForgedSet(s, baseSetId);
  try {
    const artifacts = [];
    for (const a of base.artifacts) {
      const given = sealed[a.name];
      const stored = given?.stored ?? (await fs.getBuffer(layout.artifact(s.site, baseSetId, a.file), { maxBytes: Infinity })).body;
      // Given bytes are sealed as zstd + age (sealStream), whatever the base set stored: the entry says so.
      const entry = given ? { ...a, compression: 'zstd' as const, file: artifactFileName(a.name, a.encryption === 'age', true) } : a;
      await fs.putBuffer(layout.artifact(s.site, setId, entry.file), stored);
      const { chunks: _old, ...whole } = entry;
      const chunks = chunksOf(stored);
      artifacts.push({ ...whole, storedSize: stored.length, storedSha256: sha256(stored), ...(chunks ? { chunks } : {}), plainSize: given?.plainSize ?? a.plainSize });
    }
    const manifest: Manifest = { ...base, setId, seq, createdAt: created.toISOString(), completedAt: created.toISOString(), artifacts };
    const key = loadSigningKeyFile(s.keys.signingKeyFile);
    const raw = signManifest(manifest, key);
    await fs.putBuffer(layout.manifest(s.site, setId), raw);
    await fs.putBuffer(
      layout.latest(s.site),
      signLatest(
        { format: 'tandem-latest', version: 1, site: s.site, setId, epoch: manifest.epoch, seq, createdAt: manifest.createdAt, committedAt: new Date().toISOString(), manifestSha256: sha256(raw) },
        key,
      ),
    );
    return setId;
  } finally {
    await fs.close();
  }
}
