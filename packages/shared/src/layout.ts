/** The filestore layout is the store's (store/layout.ts); re-exported for the modules that import it from here. */
export * from './store/layout.js';
