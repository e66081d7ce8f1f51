/**
 * Tar archives of site directories, and an extractor that treats every archive as hostile.
 *
 * create.ts: the primary's tar streams (GNU tar) and the check each one goes through as it is made;
 * extract.ts: the standby's safe extraction; entry-rules.ts: the rules both apply to every entry,
 * so they cannot disagree; parse.ts: reading a tar stream entry by entry, and listing one.
 */
export { createTarCheck, createTarStream } from './create.js';
export { extractTarSafe, type ExtractOptions } from './extract.js';
export { listTar, type TarListEntry } from './parse.js';
