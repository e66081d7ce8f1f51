import { hostname } from 'node:os';
import { TandemError, isNotFound, isPrecondition, layout, type Filestore, type Logger, type PrimaryConfig } from '@tandem/shared';

/** epoch.json names which server is the primary; promote raises it (fencing). */
export interface EpochDoc {
  format: 'tandem-epoch';
  version: 1;
  epoch: number;
  primaryHost: string;
  since: string;
}

export function parseEpoch(raw: Buffer, label: string): EpochDoc {
  let doc: Partial<EpochDoc>;
  try {
    doc = JSON.parse(raw.toString('utf8')) as Partial<EpochDoc>;
  } catch {
    throw new TandemError('integrity', 'EPOCH_INVALID', `${label}: not valid JSON`);
  }
  if (doc.format !== 'tandem-epoch' || typeof doc.epoch !== 'number' || !Number.isInteger(doc.epoch) || doc.epoch < 1) {
    throw new TandemError('integrity', 'EPOCH_INVALID', `${label}: not a tandem epoch document`);
  }
  return doc as EpochDoc;
}

/** Read the site's epoch, creating epoch 1 (create-if-absent) with the site's first backup. */
export async function readOrCreateEpoch(fs: Filestore, config: PrimaryConfig, logger: Logger): Promise<EpochDoc> {
  const key = layout.epoch(config.site);
  try {
    const { body } = await fs.getBuffer(key);
    return parseEpoch(body, `${fs.description}/${key}`);
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  const doc: EpochDoc = {
    format: 'tandem-epoch',
    version: 1,
    epoch: 1,
    primaryHost: config.hostname ?? hostname(),
    since: new Date().toISOString(),
  };
  try {
    await fs.writeConditional(key, Buffer.from(`${JSON.stringify(doc, null, 2)}\n`), { ifAbsent: true });
    logger.info({ epoch: 1 }, 'first backup of this site: created epoch.json');
    return doc;
  } catch (err) {
    if (!isPrecondition(err)) throw err;
    const { body } = await fs.getBuffer(key); // someone else created it first: theirs counts
    return parseEpoch(body, `${fs.description}/${key}`);
  }
}
