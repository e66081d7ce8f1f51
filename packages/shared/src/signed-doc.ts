/** Signed documents are the store's (store/signed-doc.ts); re-exported for the modules that import them from here. */
export * from './store/signed-doc.js';
