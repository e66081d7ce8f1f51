#!/usr/bin/env -S GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=1048576:${GLIBC_TUNABLES} node --max-semi-space-size=8
import { TOOL_VERSION, main } from '@tandem/shared';

// Each command's module is loaded when it runs: `backup` and `wal-push` do not load the daemon.
main({
  bin: 'tandem-primary',
  version: TOOL_VERSION,
  description: 'makes encrypted, signed backup sets of a site and uploads them to a filestore',
  commands: [
    { name: 'init', load: async () => (await import('./commands/init.js')).initCommand },
    { name: 'check', load: async () => (await import('./commands/check.js')).checkCommand },
    { name: 'backup', load: async () => (await import('./commands/backup.js')).backupCommand },
    { name: 'list', load: async () => (await import('./commands/list.js')).listCommand },
    { name: 'run', load: async () => (await import('./commands/run.js')).runCommand },
    { name: 'prune', load: async () => (await import('./commands/prune.js')).pruneCommand },
    { name: 'wal-push', load: async () => (await import('./commands/wal-push.js')).walPushCommand },
  ],
});
