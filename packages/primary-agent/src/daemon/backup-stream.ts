import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ArtifactProgress } from '@tandem/shared';
import { BACKUP_PROGRESS_TYPE } from './control.js';

/**
 * POST /v1/backup's answer. A client that accepts application/x-ndjson (`tandem-primary backup` on
 * a terminal) is sent the backup's progress while it runs, one JSON object a line:
 *   {"progress": [{"name", "bytes", "total", "seconds"}, ...]}   about four times a second
 *   {"result": BackupResult}                                      the last line, when committed
 *   {"status": 409, "error": {kind, code, message, hint}}          the last line, when it failed
 * The status line (200) goes out with the first progress line; a backup refused or failed before
 * any progress is answered as to every other client: its JSON body with its HTTP status.
 */
export type BackupHandler = (onProgress?: (artifacts: ArtifactProgress[]) => void) => Promise<{ status: number; body: unknown }>;

const acceptsProgress = (req: IncomingMessage): boolean => (req.headers.accept ?? '').split(',').some((t) => t.trim().split(';')[0] === BACKUP_PROGRESS_TYPE);

export async function answerBackup(req: IncomingMessage, res: ServerResponse, backup: BackupHandler): Promise<void> {
  let streaming = false;
  const line = (o: unknown) => res.write(`${JSON.stringify(o)}\n`);
  const onProgress = acceptsProgress(req)
    ? (artifacts: ArtifactProgress[]) => {
        if (res.destroyed) return;
        if (!streaming) {
          res.writeHead(200, { 'content-type': `${BACKUP_PROGRESS_TYPE}; charset=utf-8`, 'cache-control': 'no-store' });
          streaming = true;
        }
        line({ progress: artifacts });
      }
    : undefined;
  const r = await backup(onProgress);
  if (streaming) {
    res.end(`${JSON.stringify(r.status === 200 ? { result: r.body } : { status: r.status, ...(r.body as object) })}\n`);
    return;
  }
  const text = `${JSON.stringify(r.body, null, 2)}\n`;
  res.writeHead(r.status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}
