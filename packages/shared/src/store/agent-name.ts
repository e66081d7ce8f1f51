import { hostname } from 'node:os';
import { STANDBY_ID_PATTERN } from './fields.js';

/**
 * The name this server goes by, for people: in epoch.json (primaryHost), manifests and heartbeats,
 * and as a standby's id where the config names none. Fencing never compares it (agent ids do).
 *
 * The configured name when there is one (the primary's `hostname`, the standby's `standbyId`), else
 * the host name made into one safe path segment: every character other than letters, digits, ".",
 * "_" and "-" becomes "-", cut to 63 characters. The primary, the standby and promote all take it
 * from here, so a promoted standby names itself in epoch.json as it reported itself before.
 */
export function agentName(config: { hostname?: string } | { standbyId?: string }, osHostname: string = hostname()): string {
  const configured = 'hostname' in config ? config.hostname : 'standbyId' in config ? config.standbyId : undefined;
  if (configured !== undefined) return configured;
  const cleaned = osHostname.replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 63);
  return STANDBY_ID_PATTERN.test(cleaned) ? cleaned : 'localhost';
}
