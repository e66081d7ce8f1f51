#!/usr/bin/env -S GLIBC_TUNABLES=glibc.malloc.hugetlb=1:${GLIBC_TUNABLES} node --max-semi-space-size=8
/**
 * tandem-standby. PostgreSQL runs `wal-fetch` (restore_command) for every WAL file it replays; when
 * the daemon has fetched and verified the file ahead into the spool, spool-fast.ts answers with Node
 * alone, without loading the agent. Everything else, and every case the fast path does not take,
 * is the CLI.
 */
import { spooledFetch } from './wal/spool-fast.js';

if (!(await spooledFetch(process.argv.slice(2)))) await import('./cli.js');
