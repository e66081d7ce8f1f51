import { TOOL_VERSION, main } from '@tandem/shared';

// Each command's module is loaded when it runs: `apply`, `wal-fetch` and `status` do not load the daemon.
main({
  bin: 'tandem-standby',
  version: TOOL_VERSION,
  description: 'keeps a standby site equal to the newest committed backup set, and promotes it',
  commands: [
    { name: 'run', load: async () => (await import('./commands/run.js')).runCommand },
    { name: 'status', load: async () => (await import('./commands/status.js')).statusCommand },
    { name: 'check', load: async () => (await import('./commands/check.js')).checkCommand },
    { name: 'apply', load: async () => (await import('./commands/apply.js')).applyCommand },
    { name: 'verify', load: async () => (await import('./commands/verify.js')).verifyCommand },
    { name: 'decrypt', load: async () => (await import('./commands/decrypt.js')).decryptCommand },
    { name: 'promote', load: async () => (await import('./commands/promote.js')).promoteCommand },
    { name: 'switchover', load: async () => (await import('./commands/switchover.js')).switchoverCommand },
    { name: 'rejoin', load: async () => (await import('./commands/rejoin.js')).rejoinCommand },
    { name: 'wal-fetch', load: async () => (await import('./commands/wal-fetch.js')).walFetchCommand },
  ],
});
