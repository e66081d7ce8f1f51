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

export { parseEpoch, type EpochDoc };

/**
 * Who this primary is in epoch.json: its agent id (stateDir/agent-id, created on first use), which
 * fencing compares, and its name.
 */
export const primaryIdentity = (config: PrimaryConfig): AgentIdentity => ({ id: agentId(config.stateDir), host: agentName(config) });

/**
 * This primary's epoch: epoch.json's when it names this agent (created as epoch 1 with the site's
 * first backup). Throws 'fenced' when it names another.
 */
export async function readOrCreateEpoch(fs: Filestore, config: PrimaryConfig, logger: Logger): Promise<EpochDoc> {
  const self = primaryIdentity(config);
  const { doc, created } = await readOrCreate(fs, config.site, self);
  if (created) logger.info({ epoch: doc.epoch, agentId: self.id }, 'first backup of this site: created epoch.json');
  // Not named: fenced. Its own epoch, for the message, is the one before if that one named it.
  const prev = doc.previous;
  const own = !namesAgent(doc, self) && prev !== undefined && namesAgent({ ...doc, primaryHost: prev.primaryHost, primaryId: prev.primaryId }, self) ? prev.epoch : doc.epoch;
  assertNotFenced(doc, { ...self, epoch: own }, config.site);
  return doc;
}
