/**
 * Buffers that their producer has given away: it made each for this one chunk of a stream and
 * keeps no reference (the directory filestore's reads). ChunkVerifierThread lends such a buffer to
 * its worker as it is, where any other buffer is copied first, since a transferred buffer is gone
 * from the thread that sent it, for whoever still holds it. A stage between producer and verifier
 * that passes the chunk on unchanged keeps the mark; a slice or a copy does not carry it.
 */
const givenAway = new WeakSet<Buffer>();

/** Marks `chunk` as given away, when it alone covers its memory; returns it. */
export function giveAway(chunk: Buffer): Buffer {
  if (chunk.byteOffset === 0 && chunk.byteLength === chunk.buffer.byteLength) givenAway.add(chunk);
  return chunk;
}

/** Whether `chunk` was given away; the mark is taken with it (one taker). */
export const takeGiven = (chunk: Buffer): boolean => givenAway.delete(chunk);
