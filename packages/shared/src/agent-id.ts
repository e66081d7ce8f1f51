import { randomBytes, randomUUID } from 'node:crypto';
import { closeSync, fsyncSync, linkSync, mkdirSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { TandemError } from './errors.js';

/**
 * <stateDir>/agent-id: who an agent is in epoch.json, generated once (a random UUID) and kept.
 *
 * Fencing used to name the primary by host name, and host names collide by accident: a standby
 * cloned from the primary's image, or both agents on one machine, promoted to an epoch that named
 * the old primary just as well, which then went on backing up. An id kept in the state directory
 * differs between two agents unless their state directory is shared on purpose: by default the
 * primary and the standby agent of one server share it (defaultStateDir), so a promoted standby's
 * id is the id of the tandem-primary that runs there next.
 */
export const AGENT_ID_FILE = 'agent-id';
const AGENT_ID = /^[A-Za-z0-9._-]{1,64}$/;

export const agentIdPath = (stateDir: string): string => join(stateDir, AGENT_ID_FILE);

/** The id in `<stateDir>/agent-id`, or null when there is none yet. */
export function readAgentId(stateDir: string): string | null {
  const file = agentIdPath(stateDir);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new TandemError('config', 'AGENT_ID_UNREADABLE', `cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  const id = text.trim();
  if (!AGENT_ID.test(id)) {
    throw new TandemError('config', 'AGENT_ID_INVALID', `${file} holds ${JSON.stringify(id.slice(0, 80))}, not an agent id (1 to 64 letters, digits, ".", "_" or "-")`, {
      hint: 'write back the id epoch.json names for this server (primaryId), or remove the file to have a new one generated',
    });
  }
  return id;
}

/**
 * This agent's id: read from `<stateDir>/agent-id`, created there on first use. Two processes
 * creating it at once agree: the file appears whole by link(2), and the loser reads the winner's.
 */
export function agentId(stateDir: string): string {
  const found = readAgentId(stateDir);
  if (found !== null) return found;
  const file = agentIdPath(stateDir);
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const tmp = `${file}.tmp-${randomBytes(6).toString('hex')}`;
  const id = randomUUID();
  try {
    const fd = openSync(tmp, 'wx', 0o600);
    try {
      writeSync(fd, `${id}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    try {
      linkSync(tmp, file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      return readAgentId(stateDir) ?? id;
    }
    syncDir(dirname(file));
    return id;
  } catch (err) {
    if (err instanceof TandemError) throw err;
    throw new TandemError('config', 'AGENT_ID_UNWRITABLE', `cannot create ${file}: ${(err as Error).message}`, {
      hint: 'the state directory must be writable by the agent user',
      cause: err,
    });
  } finally {
    try {
      unlinkSync(tmp);
    } catch {
      // already gone
    }
  }
}

function syncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch {
    // some file systems cannot fsync a directory
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}
