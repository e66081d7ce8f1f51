import { hostname } from 'node:os';
import { assertNotFenced, parseEpoch, readOrCreateEpoch as readOrCreate, type EpochDoc, type Filestore, type Logger, type PrimaryConfig } from '@tandem/shared';

export { parseEpoch, type EpochDoc };

/** The name this primary goes by in epoch.json. */
export const primaryName = (config: PrimaryConfig): string => config.hostname ?? hostname();

/**
 * This primary's epoch: epoch.json's when it names this server (created as epoch 1 with the site's
 * first backup). Throws 'fenced' when it names another server.
 */
export async function readOrCreateEpoch(fs: Filestore, config: PrimaryConfig, logger: Logger): Promise<EpochDoc> {
  const { doc, created } = await readOrCreate(fs, config.site, primaryName(config));
  if (created) logger.info({ epoch: doc.epoch }, 'first backup of this site: created epoch.json');
  assertNotFenced(doc, { epoch: doc.epoch, host: primaryName(config) }, config.site);
  return doc;
}
