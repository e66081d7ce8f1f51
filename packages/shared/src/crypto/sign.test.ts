import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { TandemError } from '../errors.js';
import { thrownBy } from '../testing/helpers.js';
import { generateAgeKeyPair } from './age/index.js';
import { generateSigningKeyPair, keyId, loadSigningKey, loadVerifyKey, signBytes, verifyBytes } from './sign.js';

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

const configError = (fn: () => unknown): TandemError => thrownBy(fn, { kind: 'config' });

describe('Ed25519 signing', () => {
  const kp = generateSigningKeyPair();
  const priv = loadSigningKey(kp.privateKeyPem, 'signing.key');
  const pub = loadVerifyKey(kp.publicKeyPem, 'signing.pub');
  const data = Buffer.from(JSON.stringify({ set: 'sets/2024-05-01T00:00:00Z', files: [{ name: 'db.dump', size: 12345 }] }));

  it('generates PKCS#8 / SPKI PEM Ed25519 keys', () => {
    expect(kp.privateKeyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n[\s\S]+\n-----END PRIVATE KEY-----\n$/);
    expect(kp.publicKeyPem).toMatch(/^-----BEGIN PUBLIC KEY-----\n[\s\S]+\n-----END PUBLIC KEY-----\n$/);
    expect(priv.asymmetricKeyType).toBe('ed25519');
    expect(priv.type).toBe('private');
    expect(pub.type).toBe('public');
    expect(generateSigningKeyPair().publicKeyPem).not.toBe(kp.publicKeyPem);
  });

  it('signs and verifies', () => {
    const sig = signBytes(data, priv);
    expect(sig).toMatch(/^[A-Za-z0-9+/]{86}==$/);
    expect(verifyBytes(data, sig, pub)).toBe(true);
    expect(verifyBytes(data, sig, priv)).toBe(true); // a private key also verifies
    expect(verifyBytes(Buffer.alloc(0), signBytes(Buffer.alloc(0), priv), pub)).toBe(true);
  });

  it('any single flipped data byte fails verification', () => {
    const sig = signBytes(data, priv);
    for (let i = 0; i < data.length; i++) {
      const bad = Buffer.from(data);
      bad[i] = (bad[i] ?? 0) ^ 0x01;
      expect(verifyBytes(bad, sig, pub), `data byte ${i}`).toBe(false);
    }
    expect(verifyBytes(Buffer.concat([data, Buffer.from(' ')]), sig, pub)).toBe(false);
    expect(verifyBytes(data.subarray(1), sig, pub)).toBe(false);
  });

  it('any single flipped signature byte fails verification', () => {
    const sig = signBytes(data, priv);
    const raw = Buffer.from(sig, 'base64');
    for (let i = 0; i < raw.length; i++) {
      const bad = Buffer.from(raw);
      bad[i] = (bad[i] ?? 0) ^ 0x01;
      expect(verifyBytes(data, bad.toString('base64'), pub), `signature byte ${i}`).toBe(false);
    }
  });

  it('any single changed signature character fails, including ones that only touch unused bits', () => {
    const sig = signBytes(data, priv);
    for (let i = 0; i < sig.length; i++) {
      const c = sig[i] ?? '=';
      // Nearest other alphabet character: at index 85 this changes only the unused low bits, so
      // the bytes are identical and only strict base64 parsing can tell.
      const replacement = c === '=' ? 'A' : (B64[B64.indexOf(c) ^ 1] ?? 'A');
      const bad = sig.slice(0, i) + replacement + sig.slice(i + 1);
      expect(verifyBytes(data, bad, pub), `signature char ${i}`).toBe(false);
    }
  });

  it('a signature from another key fails', () => {
    const other = loadSigningKey(generateSigningKeyPair().privateKeyPem, 'other.key');
    expect(verifyBytes(data, signBytes(data, other), pub)).toBe(false);
    expect(verifyBytes(data, signBytes(data, priv), createPublicKey(other))).toBe(false);
  });

  it('never throws on malformed input', () => {
    const sig = signBytes(data, priv);
    for (const bad of ['', 'abc', '='.repeat(88), sig.slice(0, -2), `${sig}AA`, ` ${sig}`, sig.replace(/==$/, ''), '!'.repeat(88)]) {
      expect(verifyBytes(data, bad, pub)).toBe(false);
    }
    expect(verifyBytes(data, undefined as unknown as string, pub)).toBe(false);
    expect(verifyBytes(data, 42 as unknown as string, pub)).toBe(false);
    // A key of the wrong algorithm makes crypto.verify throw; that is still just "does not verify".
    expect(verifyBytes(data, sig, generateKeyPairSync('x25519').publicKey)).toBe(false);
  });

  it('keyId: 16 hex of SHA-256 over the raw public key, same from either half and across reloads', () => {
    const id = keyId(priv);
    expect(id).toMatch(/^[0-9a-f]{16}$/);
    expect(keyId(pub)).toBe(id);
    expect(keyId(loadVerifyKey(kp.publicKeyPem, 'again'))).toBe(id);
    expect(keyId(createPrivateKey(kp.privateKeyPem))).toBe(id);
    // Independent derivation: the raw key is the last 32 bytes of the SPKI DER encoding.
    const der = createPublicKey(kp.publicKeyPem).export({ type: 'spki', format: 'der' });
    expect(der.length).toBe(44);
    expect(id).toBe(createHash('sha256').update(der.subarray(12)).digest('hex').slice(0, 16));
    expect(keyId(loadSigningKey(generateSigningKeyPair().privateKeyPem, 'x'))).not.toBe(id);
  });
});

describe('loading signing keys', () => {
  const kp = generateSigningKeyPair();

  it('calls out a public key given where the signing key belongs', () => {
    const e = configError(() => loadSigningKey(kp.publicKeyPem, '/etc/tandem/signing.key'));
    expect(e.message).toContain('/etc/tandem/signing.key');
    expect(e.message).toMatch(/public \(verify\) key, but the private signing key was expected/);
  });

  it('calls out a private key given where the verify key belongs', () => {
    const e = configError(() => loadVerifyKey(kp.privateKeyPem, '/etc/tandem/signing.pub'));
    expect(e.message).toContain('/etc/tandem/signing.pub');
    expect(e.message).toMatch(/private \(signing\) key, but the public verify key was expected/);
  });

  it('names other wrong inputs', () => {
    const age = generateAgeKeyPair();
    expect(configError(() => loadSigningKey(`# created\n${age.identity}\n`, 'k')).message).toMatch(/^k: .*age identity/);
    expect(configError(() => loadVerifyKey(`${age.recipient}\n`, 'k')).message).toMatch(/age recipient/);
    expect(configError(() => loadVerifyKey('', 'k')).message).toMatch(/empty/);
    expect(configError(() => loadSigningKey('-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n', 'k')).message).toMatch(
      /not a valid PEM private key/,
    );
    expect(configError(() => loadVerifyKey('hello', 'k')).message).toMatch(/not a valid PEM public key/);
    const rsa = generateKeyPairSync('rsa', {
      modulusLength: 1024,
      privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
      publicKeyEncoding: { type: 'spki', format: 'pem' },
    });
    expect(configError(() => loadSigningKey(rsa.privateKey, 'k')).message).toMatch(/rsa key; an Ed25519 key was expected/);
    expect(configError(() => loadVerifyKey(rsa.publicKey, 'k')).message).toMatch(/rsa key; an Ed25519 key was expected/);
    const encrypted = createPrivateKey(kp.privateKeyPem).export({
      type: 'pkcs8',
      format: 'pem',
      cipher: 'aes-256-cbc',
      passphrase: 'pw',
    }) as string;
    expect(configError(() => loadSigningKey(encrypted, 'k')).message).toMatch(/passphrase/);
  });
});
