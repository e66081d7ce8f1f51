import { TandemError, type StandbyConfig } from '@tandem/shared';
import { readPromoted, stateFiles } from './state.js';

/**
 * Promote ran here (promoted.json in the state dir): this server is the primary now, and nothing may
 * turn it back into a copy of the filestore. The daemon and an apply both refuse; they differ in
 * what they say and in the exit status.
 */
export type PromotedRefuser = 'daemon' | 'apply';

const REFUSALS: Record<PromotedRefuser, { consequence: string; hintFirst: string; exitCode: number }> = {
  // Exit 2, as for a bad config: a supervisor must not restart the daemon over the primary.
  daemon: {
    consequence: ': this server is the primary now, and the standby agent must not apply sets over it',
    hintFirst: 'run tandem-primary here instead; ',
    exitCode: 2,
  },
  apply: { consequence: "; applying a set would overwrite the primary's data", hintFirst: '', exitCode: 1 },
};

function promotedError(config: StandbyConfig, promotedAt: string, by: PromotedRefuser): TandemError {
  const r = REFUSALS[by];
  return new TandemError('precondition', 'PROMOTED', `site "${config.site}" on this server was promoted to primary at ${promotedAt}${r.consequence}`, {
    hint: `${r.hintFirst}to make this server a standby again on purpose, remove ${stateFiles(config.stateDir).promoted} first`,
    exitCode: r.exitCode,
  });
}

/** The refusal when promoted.json exists in the state dir, else null. */
export async function promotedRefusal(config: StandbyConfig, by: PromotedRefuser): Promise<TandemError | null> {
  const promoted = await readPromoted(config.stateDir);
  return promoted === null ? null : promotedError(config, promoted.promotedAt, by);
}

export async function refuseIfPromoted(config: StandbyConfig, by: PromotedRefuser): Promise<void> {
  const refusal = await promotedRefusal(config, by);
  if (refusal !== null) throw refusal;
}
