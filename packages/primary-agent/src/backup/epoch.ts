import {
  agentId,
  agentName,
  assertNotFenced,
  namesAgent,
  parseEpoch,
  readOrCreateEpoch as readOrCreate,
  type AgentIdentity,
  type EpochDoc,
  type Filestore,
  type Logger,
  type PrimaryConfig,
} from '@tandem/shared';
import { heldEpoch, recordHeldEpoch } from './held-epoch.js';

export { parseEpoch, type EpochDoc };

/**
 * Who this primary is in epoch.json: its agent id (stateDir/agent-id, created on first use), which
 * fencing compares, and its name.
 */
export const primaryIdentity = (config: PrimaryConfig): AgentIdentity => ({ id: agentId(config.stateDir), host: agentName(config) });

/**
 * This primary's epoch: epoch.json's when it names this agent (created as epoch 1 with the site's
 * first backup), recorded in held-epoch.json. Throws 'fenced' when it names another, naming the
 * epoch this agent held (the record's, else the one before if that named it), or saying it never
 * was the primary.
 */
export async function readOrCreateEpoch(fs: Filestore, config: PrimaryConfig, logger: Logger): Promise<EpochDoc> {
  const self = primaryIdentity(config);
  const { doc, created } = await readOrCreate(fs, config.site, self);
  if (created) logger.info({ epoch: doc.epoch, agentId: self.id }, 'first backup of this site: created epoch.json');
  if (namesAgent(doc, self)) {
    await recordHeldEpoch(config.stateDir, config.site, self.id, doc.epoch).catch((err: unknown) =>
      logger.warn({ err }, 'could not record the epoch this primary holds (held-epoch.json); fencing is not affected'),
    );
    return doc;
  }
  assertNotFenced(doc, { ...self, epoch: await ownEpoch(config, self, doc) }, config.site);
  return doc;
}

/**
 * The epoch this agent held, epoch.json no longer naming it: the newer of its record and the
 * record's previous primary when that was this agent; null when neither names it.
 */
async function ownEpoch(config: PrimaryConfig, self: AgentIdentity, doc: EpochDoc): Promise<number | null> {
  const recorded = await heldEpoch(config.stateDir, config.site, self.id);
  const prev = doc.previous;
  const before = prev !== undefined && namesAgent({ ...doc, epoch: prev.epoch, primaryHost: prev.primaryHost, primaryId: prev.primaryId }, self) ? prev.epoch : null;
  if (recorded === null || before === null) return recorded ?? before;
  return Math.max(recorded, before);
}
