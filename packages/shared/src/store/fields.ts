import { z } from 'zod';
import { isSetId } from './layout.js';

/**
 * The zod pieces the stored documents (and the push protocol's messages) are built from, so that a
 * set id, a site or a time is checked the same way wherever it appears.
 *
 * How each document is checked:
 * - `z.strictObject` where the document is ours alone and carries a version a newer writer raises
 *   (manifest.json, latest.json): an unknown member is refused, and the hint says to upgrade;
 * - `z.object` (unknown members stripped) where a document travels between agents of different
 *   versions and members are added without a new version (heartbeat.json, standby reports), as the
 *   push protocol's messages do;
 * - `z.looseObject` (unknown members kept) for epoch.json, which both agents write and whose reader
 *   only needs the members fencing compares: every member it does not check is kept as it was.
 */

/** An ISO 8601 UTC time, with a message that shows the expected form. */
export const isoTime = z.iso.datetime({ message: 'expected an ISO 8601 UTC time such as 2026-11-22T03:00:00.000Z' });
export const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/);
/** As the config's site: one safe path segment. */
export const SITE_PATTERN = /^[a-z0-9][a-z0-9_-]{0,62}$/;
export const siteName = z.string().regex(SITE_PATTERN, 'expected a site name');
export const setIdField = z.string().refine(isSetId, { message: 'expected a set id such as 20261122T030000Z-e1-000042' });
/** As config.standbyId: letters, digits, ".", "_" or "-"; always one safe path segment. */
export const STANDBY_ID_PATTERN = /^[A-Za-z0-9._-]{1,63}$/;
export const standbyIdField = z.string().regex(STANDBY_ID_PATTERN, 'expected a standby id: 1-63 letters, digits, ".", "_" or "-"');
export const epochNumber = z.number().int().positive();
export const seqNumber = z.number().int().positive();

/** "path: message" of a failed parse's first issue, for error messages. */
export function firstIssue(err: z.ZodError, top = '(top level)'): string {
  const issue = err.issues[0];
  if (!issue) return 'invalid';
  return `${issue.path.length === 0 ? top : issue.path.join('.')}: ${issue.message}`;
}
