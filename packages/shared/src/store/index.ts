/**
 * The store: the one owner of the filestore layout (store/layout.ts), its documents (the filestore's
 * marker tandem-filestore.json, manifest.json, latest.json, epoch.json, heartbeat.json, standby
 * reports) and their rules (the order of sets, fencing, what verifies). Agents read and write the filestore's documents through these functions
 * only; the keys come from `layout`.
 */
export * from './layout.js';
export * from './signed-doc.js';
// The manifest's and latest.json's schemas, signing and verifying live in ../manifest.ts.
export * from '../manifest.js';
export * from './latest.js';
export * from './sets.js';
export * from './epoch.js';
export * from './heartbeat.js';
export * from './standby-report.js';
export * from './agent-name.js';
export * from './marker.js';
export * from './marker-gate.js';
export { STANDBY_ID_PATTERN } from './fields.js';
