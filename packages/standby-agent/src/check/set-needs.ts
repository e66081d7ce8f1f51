import type { Readable } from 'node:stream';
import { parseDbMeta, type DbMeta, type Filestore, type Logger, type Manifest, type StandbyConfig } from '@tandem/shared';
import { artifactLabel, canStream, decodeStored, verifiedStream } from '../apply/artifact-stream.js';
import { checkDatabasePrereqs } from '../apply/db-prereqs.js';
import { identitiesFor } from '../apply/keys.js';

/**
 * What the newest set needs of this server's PostgreSQL (its roles, extensions, the agent's
 * membership in the owner roles), checked as an apply checks it once the set is staged
 * (checkDatabasePrereqs), from the set's small database description (dbmeta) read straight from the
 * filestore: verified chunk by chunk against the signed manifest and decrypted with this standby's
 * identity, in memory, nothing written. Null when the set cannot tell: made by an older tandem
 * (no dbmeta) or without chunk digests (apply reads those whole, into its staging dir).
 */
export async function checkSetNeeds(config: StandbyConfig, fs: Filestore, manifest: Manifest, logger: Logger): Promise<{ meta: DbMeta } | { unknown: string }> {
  const entry = manifest.artifacts.find((a) => a.name === 'dbmeta');
  if (entry === undefined) return { unknown: `set ${manifest.setId} has no database description (made by an older tandem): apply checks what it can once it is staged` };
  if (!canStream(entry)) return { unknown: `set ${manifest.setId} lists no chunk digests for its database description: apply checks it once it is staged` };
  const identities = identitiesFor(config, manifest, logger);
  const chunks: Buffer[] = [];
  await decodeStored(await verifiedStream({ filestore: fs, manifest, entry, identities }), identities, async (plain: Readable) => {
    for await (const c of plain) chunks.push(c as Buffer);
  });
  const meta = parseDbMeta(Buffer.concat(chunks), artifactLabel(manifest, entry));
  await checkDatabasePrereqs(config, meta, manifest.setId, logger);
  return { meta };
}
