import { TandemError, listSets, type Filestore } from '@tandem/shared';

/**
 * "2026-11-20 14:00" as an operator means it: the machine's local time unless the text names a zone
 * ("Z", "+01:00"). Anything Date cannot read exactly is refused rather than guessed.
 */
export function parseAt(text: string): Date {
  const t = text.trim();
  const m = /^(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,3})?)?)?(Z|[+-]\d{2}:?\d{2})?$/.exec(t);
  const d = m ? new Date(m[7] ? t.replace(' ', 'T') : `${m[1]}-${m[2]}-${m[3]}T${m[4] ?? '23'}:${m[5] ?? '59'}:${m[6] ?? (m[4] ? '00' : '59')}`) : null;
  if (!d || Number.isNaN(d.getTime())) {
    throw new TandemError('config', 'USAGE', `--at "${text}": expected a time such as "2026-11-20 14:00" (local time), "2026-11-20" (end of that day) or "2026-11-20T13:00Z"`);
  }
  return d;
}

/**
 * The newest committed set (in the order of sets) created at or before `at` (the restore-to-a-date
 * of Plone's collective.recipe.backup). Only sets with a manifest count; their manifests are
 * verified when the chosen set is applied.
 */
export async function findSetAt(fs: Filestore, site: string, at: Date): Promise<string> {
  const sets = await listSets(fs, site, { committedOnly: true }); // oldest first
  const best = sets.findLast((s) => s.time.getTime() <= at.getTime())?.setId ?? null;
  const oldest = sets[0]?.setId ?? null;
  if (best === null) {
    throw new TandemError(
      'not-found',
      'NO_SET_AT',
      `no committed set of site "${site}" was made at or before ${at.toISOString()}${oldest ? `; the oldest is ${oldest}` : ': the filestore holds none'}`,
      { hint: 'retention may have removed older sets: `tandem-primary list` shows what is kept' },
    );
  }
  return best;
}
