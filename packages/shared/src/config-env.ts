import { Scalar, isPair, isScalar, isSeq, parse, visit, type Document } from 'yaml';

/**
 * `${NAME}` in a config value is replaced by the environment variable NAME, so that containers and
 * secret managers can inject values (as Litestream's configs allow). The replacement happens on the
 * parsed YAML, one scalar at a time: a variable's value can only ever become (part of) that one
 * value, never new keys or structure, whatever characters it holds.
 *
 *   - `$${` stands for a literal `${`; any other `$` is left as it is (no `$NAME` form).
 *   - A variable that is not set is a config error naming it and the key path of the value.
 *   - Mapping keys are never expanded; comments are not values.
 *   - An unquoted (plain) value is typed after the replacement as YAML would type it written out:
 *     `level: ${ZSTD_LEVEL}` with ZSTD_LEVEL=9 is the number 9. A quoted value stays a string.
 */
export interface EnvProblem {
  /** Key path of the value, as config errors name it (standbys.0.tokenFile). */
  path: string;
  message: string;
}

const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** The key path of a node, from visit()'s ancestors. */
function keyPath(ancestors: readonly unknown[], node: unknown): string {
  const parts: string[] = [];
  for (let i = 0; i < ancestors.length; i++) {
    const a = ancestors[i];
    if (isPair(a)) parts.push(String(isScalar(a.key) ? a.key.value : a.key));
    else if (isSeq(a)) parts.push(String(a.items.indexOf((ancestors[i + 1] ?? node) as never)));
  }
  return parts.length === 0 ? '(top level)' : parts.join('.');
}

/**
 * Expands one string; returns the text, or the problems found (each a sentence without the path).
 * Exported for tests.
 */
export function expandEnvString(text: string, env: NodeJS.ProcessEnv): { text: string; problems: string[] } {
  const problems: string[] = [];
  let out = '';
  let i = 0;
  while (i < text.length) {
    const at = text.indexOf('$', i);
    if (at < 0) {
      out += text.slice(i);
      break;
    }
    out += text.slice(i, at);
    if (text.startsWith('$${', at)) {
      out += '${';
      i = at + 3;
      continue;
    }
    if (!text.startsWith('${', at)) {
      out += '$';
      i = at + 1;
      continue;
    }
    const end = text.indexOf('}', at + 2);
    if (end < 0) {
      problems.push('"${" without a closing "}": write ${NAME} for an environment variable, or $${ for a literal "${"');
      out += text.slice(at);
      break;
    }
    const name = text.slice(at + 2, end);
    if (!NAME.test(name)) {
      problems.push(`"\${${name}}" is not a variable reference: a name is letters, digits and "_", not starting with a digit (write $\${ for a literal "\${")`);
    } else if (env[name] === undefined) {
      problems.push(`environment variable ${name} is not set (the value refers to \${${name}}; write $\${ for a literal "\${")`);
    } else {
      out += env[name];
    }
    i = end + 1;
  }
  return { text: out, problems };
}

/** A plain scalar's value once expanded: a number or a boolean if YAML would read the text as one. */
function typedPlain(text: string): string | number | boolean {
  try {
    const v: unknown = parse(text);
    if (typeof v === 'number' || typeof v === 'boolean') return v;
  } catch {
    /* not a scalar YAML reads: a string */
  }
  return text;
}

/** Replaces every `${NAME}` in the document's values in place; returns what could not be expanded. */
export function expandEnvReferences(doc: Document, env: NodeJS.ProcessEnv = process.env): EnvProblem[] {
  const problems: EnvProblem[] = [];
  visit(doc, {
    Scalar(key, node, ancestors) {
      if (key === 'key' || typeof node.value !== 'string' || !node.value.includes('$')) return;
      const r = expandEnvString(node.value, env);
      if (r.problems.length > 0) {
        const path = keyPath(ancestors, node);
        for (const message of r.problems) problems.push({ path, message });
        return;
      }
      if (r.text === node.value) return;
      node.value = node.type === Scalar.PLAIN ? typedPlain(r.text) : r.text;
    },
  });
  return problems;
}
