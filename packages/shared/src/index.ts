export * from './errors.js';
export * from './filestore/filestore.js';
export * from './filestore/open.js';
export * from './crypto/age.js';
export * from './crypto/sign.js';
export * from './compress.js';
export * from './archive.js';
export * from './streams.js';
