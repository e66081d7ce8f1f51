import type { KeyObject } from 'node:crypto';
import { keyId, signBytes, verifyBytes } from '../crypto/sign.js';
import { TandemError } from '../errors.js';

/**
 * Signed JSON documents (manifests, latest.json, epoch.json, heartbeat.json).
 *
 * The file is the canonical serialisation (sorted keys, 2-space indent, trailing newline) of the
 * body plus a `signature` member; the signature covers the canonical serialisation of the body
 * alone. Verification re-serialises and demands byte equality with the file, so any change to any
 * byte, even whitespace, is rejected, while the file stays readable with `jq`.
 */
export interface Signature {
  alg: 'ed25519';
  keyId: string;
  value: string;
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

function sortKeys(value: unknown): Json {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === 'object') {
    const out: { [k: string]: Json } = {};
    for (const k of Object.keys(value).sort()) {
      const v = (value as Record<string, unknown>)[k];
      if (v !== undefined) out[k] = sortKeys(v);
    }
    return out;
  }
  return value as Json;
}

export function canonicalJson(value: unknown): Buffer {
  return Buffer.from(`${JSON.stringify(sortKeys(value), null, 2)}\n`, 'utf8');
}

export function signDocument(body: object, key: KeyObject): Buffer {
  // A caller's bug (signing a document already signed), never the operator's input.
  if ('signature' in body) throw new TandemError('internal', 'DOC_ALREADY_SIGNED', 'document body must not carry a signature member');
  const signature: Signature = { alg: 'ed25519', keyId: keyId(key), value: signBytes(canonicalJson(body), key) };
  return canonicalJson({ ...body, signature });
}

/**
 * Verify a signed document and return its body (unvalidated beyond being an object).
 * `label` names the document in errors ("set 2026...: manifest.json").
 */
export function verifyDocument(raw: Buffer, key: KeyObject, label: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw.toString('utf8'));
  } catch {
    throw new TandemError('integrity', 'DOC_NOT_JSON', `${label}: not valid JSON (damaged or truncated)`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new TandemError('integrity', 'DOC_NOT_JSON', `${label}: expected a JSON object`);
  }
  const { signature, ...body } = parsed as Record<string, unknown>;
  const sig = signature as Partial<Signature> | undefined;
  if (!sig || sig.alg !== 'ed25519' || typeof sig.value !== 'string' || typeof sig.keyId !== 'string') {
    throw new TandemError('integrity', 'DOC_UNSIGNED', `${label}: has no Ed25519 signature; refusing an unsigned document`);
  }
  const expectedKeyId = keyId(key);
  if (sig.keyId !== expectedKeyId) {
    throw new TandemError(
      'integrity',
      'DOC_FOREIGN_KEY',
      `${label}: signed by key ${sig.keyId}, but this agent trusts key ${expectedKeyId}`,
      { hint: 'check keys.verifyKeyFile: it must be the signing.pub made next to the primary\'s signing.key' },
    );
  }
  if (!verifyBytes(canonicalJson(body), sig.value, key)) {
    throw new TandemError('integrity', 'DOC_BAD_SIGNATURE', `${label}: signature does not match its content (tampered or damaged)`);
  }
  if (!canonicalJson(parsed).equals(raw)) {
    throw new TandemError('integrity', 'DOC_NOT_CANONICAL', `${label}: bytes differ from the signed form (edited after signing)`);
  }
  return body;
}
