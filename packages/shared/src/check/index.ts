/**
 * The dry check both agents run: the runner and report (runner.ts), the probes both use (probes.ts),
 * the checks and answers both agents' lists share (agent-checks.ts), and the command's body (command.ts).
 */
export * from './runner.js';
export * from './probes.js';
export * from './agent-checks.js';
export * from './command.js';
