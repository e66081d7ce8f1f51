/**
 * A strict JSON reader that reports keys repeated within one object, which JSON.parse (last one
 * wins) cannot see, and strict consumers reject. Keys are compared decoded ("a" and "\u0061" are
 * the same key).
 */

export interface StrictJsonResult {
  /** JSON paths of every repeated key, e.g. `$.setId`, `$.err.code`. */
  duplicates: string[];
}

/** Throws on anything that is not one valid JSON value (surrounding whitespace allowed). */
export function strictJson(text: string): StrictJsonResult {
  let i = 0;
  const duplicates: string[] = [];
  const fail = (what: string): never => {
    throw new Error(`not valid JSON: ${what} at offset ${i}: ${text.slice(Math.max(0, i - 20), i + 20)}`);
  };
  const ws = () => {
    while (i < text.length && (text[i] === ' ' || text[i] === '\t' || text[i] === '\n' || text[i] === '\r')) i++;
  };
  const string = (): string => {
    const start = i;
    i++; // the opening quote
    for (;;) {
      if (i >= text.length) fail('unterminated string');
      const c = text.charCodeAt(i);
      if (c === 0x22) break; // "
      if (c < 0x20) fail('control character in a string');
      if (c === 0x5c) {
        const e = text[i + 1];
        if (e === 'u') {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) fail('bad \\u escape');
          i += 6;
        } else if (e !== undefined && '"\\/bfnrt'.includes(e)) {
          i += 2;
        } else {
          fail('bad escape');
        }
        continue;
      }
      i++;
    }
    i++; // the closing quote
    return JSON.parse(text.slice(start, i)) as string;
  };
  const value = (path: string): void => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const seen = new Set<string>();
      ws();
      if (text[i] === '}') {
        i++;
        return;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail('expected a key');
        const key = string();
        if (seen.has(key)) duplicates.push(`${path}.${key}`);
        seen.add(key);
        ws();
        if (text[i] !== ':') fail('expected ":"');
        i++;
        value(`${path}.${key}`);
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === '}') {
          i++;
          return;
        }
        fail('expected "," or "}"');
      }
    }
    if (c === '[') {
      i++;
      ws();
      if (text[i] === ']') {
        i++;
        return;
      }
      for (let n = 0; ; n++) {
        value(`${path}[${n}]`);
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') {
          i++;
          return;
        }
        fail('expected "," or "]"');
      }
    }
    if (c === '"') {
      string();
      return;
    }
    const m = /^(?:-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null)/.exec(text.slice(i, i + 64));
    if (m === null) fail('expected a value');
    i += m![0].length;
  };
  value('$');
  ws();
  if (i !== text.length) fail('text after the value');
  return { duplicates };
}

/**
 * Every line of a CLI's stderr that is a log record: each must be one valid JSON object with
 * unique keys. Returns the problems (line number, what), empty when all are fine. Lines that do
 * not start with "{" are the command's messages ("tandem-primary: error: ..."), not log records.
 */
export function jsonLogProblems(stderr: string): string[] {
  const problems: string[] = [];
  stderr.split('\n').forEach((line, n) => {
    if (!line.startsWith('{')) return;
    try {
      const { duplicates } = strictJson(line);
      if (duplicates.length > 0) problems.push(`line ${n + 1}: repeated key(s) ${duplicates.join(', ')}: ${line.slice(0, 300)}`);
    } catch (err) {
      problems.push(`line ${n + 1}: ${(err as Error).message}`);
    }
  });
  return problems;
}
