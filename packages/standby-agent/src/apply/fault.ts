/**
 * Named points where a crash test can kill the agent (TANDEM_FAULT_KILL_AT=<point>). SIGKILL, not an
 * exception: nothing gets to clean up, exactly as with a power cut or the OOM killer.
 */
export type FaultPoint =
  | 'journal-written'
  | 'staged-db'
  | 'staged-config'
  | 'staged-security'
  | 'staged-files'
  | 'sentinel-written'
  | 'db-restored'
  | 'switching'
  | 'db-swapped'
  | 'config-swapped'
  | 'security-swapped'
  | 'files-swapped'
  | 'recorded'
  | 'before-restart';

export function faultPoint(point: FaultPoint): void {
  if (process.env.TANDEM_FAULT_KILL_AT === point) process.kill(process.pid, 'SIGKILL');
}
