import { faultPoint as killAt } from '@tandem/shared';

/**
 * Named points where a crash test can kill the agent (TANDEM_FAULT_KILL_AT=<point>); the shared hook
 * (packages/shared/src/fault.ts) also has byte triggers mid-transfer: download:<artifact>:<bytes>
 * (stored bytes read from the filestore) and restore:db:<bytes> (dump bytes fed to pg_restore).
 * SIGKILL, not an exception: nothing gets to clean up, exactly as with a power cut or the OOM killer.
 */
export type FaultPoint =
  | 'journal-written'
  | 'staged-db'
  | 'staged-dbmeta'
  | 'staged-config'
  | 'staged-security'
  | 'staged-files'
  | 'sentinel-written'
  | 'restore-db-created'
  | 'restore-started'
  | 'db-restored'
  | 'switching'
  | 'schema-switch-started'
  | 'schema-committed'
  | 'db-blocked'
  | 'db-swapped'
  | 'config-moved-aside'
  | 'cluster-moved-aside'
  | 'promote-epoch-raised'
  | 'config-swapped'
  | 'security-moved-aside'
  | 'security-swapped'
  | 'files-moved-aside'
  | 'files-swapped'
  | 'files-staged'
  | 'files-renamed-one'
  | 'files-patched-part'
  | 'recorded'
  | 'before-restart'
  | 'restart-running';

export function faultPoint(point: FaultPoint): void {
  killAt(point);
}
