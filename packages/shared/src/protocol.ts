import { z } from 'zod';
import { TandemError } from './errors.js';
import { STANDBY_ID_PATTERN, epochNumber as epoch, firstIssue as issueOf, isoTime, setIdField as setId, siteName as site, standbyIdField as standbyId } from './store/fields.js';

/**
 * The push channel between the agents. The small documents the agents exchange through the
 * filestore (standby reports, the primary's heartbeat) are the store's (store/standby-report.ts,
 * store/heartbeat.ts).
 *
 * WebSocket, version 1, at `ws(s)://<primary server.listen>/v1/stream`:
 * - The standby authenticates on the upgrade request with `Authorization: Bearer <token>`; a token is
 *   never put in the query string (query strings end up in access logs). A wrong or missing token gets
 *   `HTTP/1.1 401 Unauthorized` and a closed socket, nothing else.
 * - Every frame is one UTF-8 JSON object with a `type`, at most MAX_FRAME_BYTES (64 KiB).
 * - primary → standby: `hello` right after the upgrade; `set-committed` the moment latest.json names a
 *   new set; `heartbeat` every heartbeatInterval. The primary also pings (WebSocket ping) and drops a
 *   connection that does not answer.
 * - standby → primary: `hello` once, first; `applied` after each successful apply.
 * - A planned switchover has messages of its own (`switchover-*`, below), on a connection of its own.
 * - Unknown members are ignored (stripped), so adding a member is not a breaking change; a breaking
 *   change gets a new path (/v2/stream). The primary closes a connection that sends anything else than
 *   a valid standby message with 1008 (policy violation) and a reason naming the problem; a standby
 *   should ignore messages of a type it does not know (code PROTOCOL_UNKNOWN_TYPE) and close on the rest.
 */
export const PROTOCOL_VERSION = 1;
export const STREAM_PATH = '/v1/stream';
export const MAX_FRAME_BYTES = 64 * 1024;
/** Close codes the primary uses. */
export const CLOSE_CODES = {
  /** Shutting down. */
  goingAway: 1001,
  /** The peer sent something that is not a valid message (or sent it at the wrong moment). */
  policyViolation: 1008,
  /** This primary is fenced: a higher epoch exists; follow the new primary instead. */
  fenced: 4003,
  /** A newer connection with the same standbyId took this one's place. */
  replaced: 4009,
} as const;

/** As config.standbyId: letters, digits, ".", "_" or "-"; always one safe path segment. */
export { STANDBY_ID_PATTERN };

// ---------------------------------------------------------------------------------------------
// primary → standby
// ---------------------------------------------------------------------------------------------

export const primaryHelloSchema = z.object({
  type: z.literal('hello'),
  site,
  /** The primary's epoch; null only while the primary could not read epoch.json yet. */
  epoch: epoch.nullable(),
  /** The set latest.json names, as far as the primary knows; null before the first backup. */
  latestSetId: setId.nullable(),
  /** The primary's clock, so a standby can tell clock skew from lag. */
  serverTime: isoTime,
});

export const setCommittedSchema = z.object({
  type: z.literal('set-committed'),
  site,
  setId,
  epoch,
  seq: z.number().int().positive(),
  createdAt: isoTime,
  committedAt: isoTime,
  /** The newest files delta on top of the set (latest.json's files.delta), when there is one. */
  filesDelta: z.number().int().positive().optional(),
});

export const primaryHeartbeatMessageSchema = z.object({
  type: z.literal('heartbeat'),
  at: isoTime,
});

// ---------------------------------------------------------------------------------------------
// standby → primary
// ---------------------------------------------------------------------------------------------

export const standbyHelloSchema = z.object({
  type: z.literal('hello'),
  standbyId,
  site,
  appliedSetId: setId.nullable(),
  appliedCreatedAt: isoTime.nullable(),
});

export const appliedSchema = z.object({
  type: z.literal('applied'),
  standbyId,
  setId,
  /** Creation time of the applied set (its manifest's createdAt). */
  createdAt: isoTime,
  appliedAt: isoTime,
});

// ---------------------------------------------------------------------------------------------
// Planned switchover (`tandem-standby switchover`), on a connection of its own
// ---------------------------------------------------------------------------------------------
//
// standby → primary: `switchover-request` (as the first message instead of `hello`, so that the
// standby daemon's own connection of the same standbyId is not replaced; after a hello it must name
// the same standbyId; either must name the standby whose token opened the connection), then, once the
// final set is applied, `switchover-promoting`, and `switchover-abort` or `switchover-done`.
// primary → standby: `switchover-progress` at each step, then `switchover-ready` (the final set is
// committed and the primary holds: writes stopped, no backups) or `switchover-failed`; after
// `switchover-promoting` a `switchover-promote-ok`; after an abort, the hold timeout or a lost
// connection `switchover-resumed`; after `switchover-done` a `switchover-progress` of step "fenced"
// and the 4003 close every connection of a fenced primary gets.
//
// The promote handshake: the standby raises the epoch only after `switchover-promote-ok`. Until the
// primary sent it, nobody can be promoting, so a lost connection ends the hold at once (onResume); after
// it, the primary holds until its deadline (the standby may be raising the epoch).

/*
 * Step names (the `step` of progress, failed and abort messages, the logs and the primary's /status):
 * primary: accepted, wait-for-backup, stop-writes, writes-stopped, final-backup,
 * final-backup-committed, final-wal, final-wal-archived (WAL mode), hold, resume, fenced; a refusal
 * is step "request". standby (abort): wait-for-ready, apply, replay (WAL mode), promote. Free-form
 * on the wire, so that a newer peer's steps still parse.
 */
const requestId = z.string().regex(/^[A-Za-z0-9-]{8,64}$/, 'expected a request id: 8-64 letters, digits or "-"');
/** A step name; free-form (lowercase and "-") so that a newer peer's steps still parse. */
const step = z.string().regex(/^[a-z][a-z-]{0,39}$/, 'expected a step name such as "final-backup"');
const text = (max: number) => z.string().max(max);

export const switchoverRequestSchema = z.object({
  type: z.literal('switchover-request'),
  requestId,
  site,
  standbyId,
  /** How long the primary may hold (writes stopped, no backups) for this standby; the primary caps it. */
  timeoutSeconds: z.number().int().min(1).max(86_400),
});

export const switchoverAbortSchema = z.object({
  type: z.literal('switchover-abort'),
  requestId,
  /** The step that failed on the standby ("apply", "promote" ...). */
  step,
  error: text(4000),
});

/** The final set is applied: may the standby raise the epoch now? */
export const switchoverPromotingSchema = z.object({
  type: z.literal('switchover-promoting'),
  requestId,
});

export const switchoverDoneSchema = z.object({
  type: z.literal('switchover-done'),
  requestId,
  /** The epoch the standby raised epoch.json to. */
  epoch,
});

export const switchoverProgressSchema = z.object({
  type: z.literal('switchover-progress'),
  requestId,
  step,
  /** One line for the operator. */
  detail: text(1000),
  /** The final set, once it is committed. */
  setId: setId.nullable(),
  at: isoTime,
});

export const switchoverReadySchema = z.object({
  type: z.literal('switchover-ready'),
  requestId,
  /** The final set: apply exactly this one, then promote. */
  setId,
  epoch,
  /**
   * WAL mode: the WAL file that holds the primary's last write, switched and archived (stored in the
   * filestore) before this message: the standby promotes only once it has replayed it.
   */
  walFile: z.string().regex(/^[0-9A-F]{24}$/, 'expected a WAL segment name').optional(),
  /** Since when the primary holds, and for how long at most (the capped timeout). */
  heldSince: isoTime,
  holdSeconds: z.number().int().positive(),
});

/** Yes: the primary holds until `holdUntil` whatever becomes of the connection. */
export const switchoverPromoteOkSchema = z.object({
  type: z.literal('switchover-promote-ok'),
  requestId,
  holdUntil: isoTime,
});

export const switchoverFailedSchema = z.object({
  type: z.literal('switchover-failed'),
  requestId,
  step,
  error: text(4000),
  /**
   * The primary afterwards: "unchanged" (refused before anything changed), "resumed" (onResume ran;
   * it keeps running as primary), "resume-failed" (onResume failed: the site's writes may still be
   * stopped), "fenced" (a higher epoch exists).
   */
  primary: z.enum(['unchanged', 'resumed', 'resume-failed', 'fenced']),
});

export const switchoverResumedSchema = z.object({
  type: z.literal('switchover-resumed'),
  requestId,
  /** Why the switchover was called off. */
  reason: text(4000),
  onResume: z.enum(['ok', 'failed']),
  error: text(4000).nullable(),
});

export type SwitchoverRequest = z.infer<typeof switchoverRequestSchema>;
export type SwitchoverAbort = z.infer<typeof switchoverAbortSchema>;
export type SwitchoverDone = z.infer<typeof switchoverDoneSchema>;
export type SwitchoverPromoting = z.infer<typeof switchoverPromotingSchema>;
export type SwitchoverPromoteOk = z.infer<typeof switchoverPromoteOkSchema>;
export type SwitchoverProgress = z.infer<typeof switchoverProgressSchema>;
export type SwitchoverReady = z.infer<typeof switchoverReadySchema>;
export type SwitchoverFailed = z.infer<typeof switchoverFailedSchema>;
export type SwitchoverResumed = z.infer<typeof switchoverResumedSchema>;
/** Switchover messages of each direction. */
export type SwitchoverPrimaryMessage = SwitchoverProgress | SwitchoverReady | SwitchoverPromoteOk | SwitchoverFailed | SwitchoverResumed;
export type SwitchoverStandbyMessage = SwitchoverRequest | SwitchoverPromoting | SwitchoverAbort | SwitchoverDone;

export type PrimaryHello = z.infer<typeof primaryHelloSchema>;
export type SetCommitted = z.infer<typeof setCommittedSchema>;
export type PrimaryHeartbeatMessage = z.infer<typeof primaryHeartbeatMessageSchema>;
export type StandbyHello = z.infer<typeof standbyHelloSchema>;
export type AppliedMessage = z.infer<typeof appliedSchema>;

/** What the primary sends. */
export type PrimaryMessage = PrimaryHello | SetCommitted | PrimaryHeartbeatMessage;
/** What a standby sends. */
export type StandbyMessage = StandbyHello | AppliedMessage;

/**
 * The switchover messages are directions of their own ('switchover-to-primary',
 * 'switchover-to-standby'): a push client parsing 'primary-to-standby' still sees them as unknown
 * types (and ignores them), and the existing message unions stay as they are. The primary parses a
 * frame as 'standby-to-primary' first and, for an unknown type, as 'switchover-to-primary'.
 */
export type Direction = 'primary-to-standby' | 'standby-to-primary' | 'switchover-to-primary' | 'switchover-to-standby';

const SCHEMAS = {
  'primary-to-standby': { hello: primaryHelloSchema, 'set-committed': setCommittedSchema, heartbeat: primaryHeartbeatMessageSchema },
  'standby-to-primary': { hello: standbyHelloSchema, applied: appliedSchema },
  'switchover-to-primary': {
    'switchover-request': switchoverRequestSchema,
    'switchover-promoting': switchoverPromotingSchema,
    'switchover-abort': switchoverAbortSchema,
    'switchover-done': switchoverDoneSchema,
  },
  'switchover-to-standby': {
    'switchover-progress': switchoverProgressSchema,
    'switchover-ready': switchoverReadySchema,
    'switchover-promote-ok': switchoverPromoteOkSchema,
    'switchover-failed': switchoverFailedSchema,
    'switchover-resumed': switchoverResumedSchema,
  },
} as const;

type AnyMessage = PrimaryMessage | StandbyMessage | SwitchoverPrimaryMessage | SwitchoverStandbyMessage;

type RawFrame = string | Buffer | ArrayBuffer | Buffer[] | Uint8Array;

function frameBytes(raw: RawFrame): Buffer {
  if (typeof raw === 'string') return Buffer.from(raw, 'utf8');
  if (Array.isArray(raw)) return Buffer.concat(raw);
  if (Buffer.isBuffer(raw)) return raw;
  if (raw instanceof ArrayBuffer) return Buffer.from(raw);
  return Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
}

function protocolError(code: string, message: string): TandemError {
  return new TandemError('permanent', code, message);
}

const firstIssue = (err: z.ZodError): string => issueOf(err, '(message)');

/**
 * Parse and validate one frame. Throws a TandemError (kind 'permanent', code PROTOCOL_*) whose
 * message names the problem: PROTOCOL_FRAME_TOO_LARGE, PROTOCOL_NOT_JSON, PROTOCOL_NOT_OBJECT,
 * PROTOCOL_UNKNOWN_TYPE, PROTOCOL_INVALID.
 */
export function parseMessage(raw: RawFrame, direction: 'primary-to-standby'): PrimaryMessage;
export function parseMessage(raw: RawFrame, direction: 'standby-to-primary'): StandbyMessage;
export function parseMessage(raw: RawFrame, direction: 'switchover-to-primary'): SwitchoverStandbyMessage;
export function parseMessage(raw: RawFrame, direction: 'switchover-to-standby'): SwitchoverPrimaryMessage;
export function parseMessage(raw: RawFrame, direction: Direction): AnyMessage;
export function parseMessage(raw: RawFrame, direction: Direction): AnyMessage {
  const bytes = frameBytes(raw);
  if (bytes.length > MAX_FRAME_BYTES) {
    throw protocolError('PROTOCOL_FRAME_TOO_LARGE', `message of ${bytes.length} bytes exceeds the ${MAX_FRAME_BYTES}-byte limit`);
  }
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    throw protocolError('PROTOCOL_NOT_JSON', 'message is not UTF-8 JSON');
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw protocolError('PROTOCOL_NOT_OBJECT', 'message is not a JSON object');
  }
  const type = (value as { type?: unknown }).type;
  const schemas = SCHEMAS[direction] as Record<string, z.ZodType>;
  const known = Object.keys(schemas);
  if (typeof type !== 'string' || !Object.hasOwn(schemas, type)) {
    const shown = typeof type === 'string' ? `"${type.slice(0, 40)}"` : 'missing';
    throw protocolError('PROTOCOL_UNKNOWN_TYPE', `message type ${shown} is not one of ${known.join(', ')} (${direction})`);
  }
  const r = schemas[type]!.safeParse(value);
  if (!r.success) throw protocolError('PROTOCOL_INVALID', `invalid "${type}" message: ${firstIssue(r.error)}`);
  return r.data as AnyMessage;
}

/** Validate an outgoing message and serialise it; an invalid one is a bug on the sending side. */
export function encodeMessage(msg: PrimaryMessage, direction: 'primary-to-standby'): string;
export function encodeMessage(msg: StandbyMessage, direction: 'standby-to-primary'): string;
export function encodeMessage(msg: SwitchoverStandbyMessage, direction: 'switchover-to-primary'): string;
export function encodeMessage(msg: SwitchoverPrimaryMessage, direction: 'switchover-to-standby'): string;
export function encodeMessage(msg: AnyMessage, direction: Direction): string {
  const schemas = SCHEMAS[direction] as Record<string, z.ZodType>;
  const schema = schemas[msg.type];
  const r = schema?.safeParse(msg);
  if (!schema || !r || !r.success) {
    throw new TandemError('internal', 'PROTOCOL_ENCODE', `refusing to send an invalid "${msg.type}" message (${direction}): ${r && !r.success ? firstIssue(r.error) : 'unknown type'}`);
  }
  const text = JSON.stringify(r.data);
  if (Buffer.byteLength(text) > MAX_FRAME_BYTES) throw new TandemError('internal', 'PROTOCOL_ENCODE', `"${msg.type}" message exceeds ${MAX_FRAME_BYTES} bytes`);
  return text;
}
