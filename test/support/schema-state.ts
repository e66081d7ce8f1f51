/**
 * One schema of a database, read from the catalogs and the rows so that two schemas (the primary's
 * and the standby's copy, or one schema before and after something ran beside it) compare with
 * toEqual: every object with its owner, privileges and definition, every column, constraint,
 * index, comment and default privilege, a digest of every table's rows, every sequence's value.
 * With `oids`, each object's oid too: equal then means the very same objects, not recreated ones.
 */
import pg from 'pg';

export interface SchemaState {
  schema: { owner: string; acl: string | null; comment: string | null; oid?: number } | null;
  objects: string[];
  rows: Record<string, string>;
  sequences: Record<string, string>;
}

export async function schemaState(url: string, schema: string, opts: { oids?: boolean } = {}): Promise<SchemaState> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const q = async <R extends pg.QueryResultRow>(sql: string, params: unknown[] = [schema]) => (await c.query<R>(sql, params)).rows;
    const ns = (
      await q<{ owner: string; acl: string | null; comment: string | null; oid: number }>(
        `SELECT pg_get_userbyid(nspowner) AS owner, nspacl::text AS acl, obj_description(oid, 'pg_namespace') AS comment, oid::int AS oid
           FROM pg_namespace WHERE nspname = $1`,
      )
    )[0];
    if (ns === undefined) return { schema: null, objects: [], rows: {}, sequences: {} };
    const oid = (col: string) => (opts.oids ? ` || ' #' || ${col}::oid::int` : '');
    const objects = (
      await q<{ o: string }>(
        `SELECT format('%s %s owner=%s acl=%s', c.relkind, c.relname, pg_get_userbyid(c.relowner), coalesce(c.relacl::text, 'default'))${oid('c.oid')} AS o
           FROM pg_class c WHERE c.relnamespace = $1::regnamespace
         UNION ALL
         SELECT format('column %s.%s %s notnull=%s default=%s acl=%s', c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                       pg_get_expr(d.adbin, d.adrelid), coalesce(a.attacl::text, 'default'))
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE c.relnamespace = $1::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
         UNION ALL
         SELECT format('constraint %s %s', conname, pg_get_constraintdef(oid))${oid('oid')} FROM pg_constraint WHERE connamespace = $1::regnamespace
         UNION ALL
         SELECT format('index %s', pg_get_indexdef(i.indexrelid)) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace = $1::regnamespace
         UNION ALL
         SELECT format('view %s %s', c.relname, pg_get_viewdef(c.oid)) FROM pg_class c WHERE c.relnamespace = $1::regnamespace AND c.relkind IN ('v', 'm')
         UNION ALL
         SELECT format('function %s owner=%s acl=%s %s', p.oid::regprocedure, pg_get_userbyid(p.proowner), coalesce(p.proacl::text, 'default'), pg_get_functiondef(p.oid))${oid('p.oid')}
           FROM pg_proc p WHERE p.pronamespace = $1::regnamespace
         UNION ALL
         SELECT format('type %s owner=%s', t.typname, pg_get_userbyid(t.typowner)) FROM pg_type t WHERE t.typnamespace = $1::regnamespace AND t.typrelid = 0 AND t.typcategory <> 'A'
         UNION ALL
         SELECT format('comment %s = %s', pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description)
           FROM pg_description d JOIN pg_class c ON d.classoid = 'pg_class'::regclass AND c.oid = d.objoid WHERE c.relnamespace = $1::regnamespace
         UNION ALL
         SELECT format('default acl %s %s %s', pg_get_userbyid(defaclrole), defaclobjtype, defaclacl::text) FROM pg_default_acl WHERE defaclnamespace = $1::regnamespace
         UNION ALL
         SELECT format('trigger %s', pg_get_triggerdef(t.oid)) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relnamespace = $1::regnamespace AND NOT t.tgisinternal
         ORDER BY 1`,
        [ns.oid],
      )
    ).map((r) => r.o);
    const rows: Record<string, string> = {};
    for (const t of await q<{ relname: string }>(`SELECT relname FROM pg_class WHERE relnamespace = $1::regnamespace AND relkind IN ('r', 'p') ORDER BY 1`, [ns.oid])) {
      const ident = `${c.escapeIdentifier(schema)}.${c.escapeIdentifier(t.relname)}`;
      const r = await c.query<{ n: string; d: string | null }>(`SELECT count(*)::text AS n, md5(string_agg(x::text, E'\\n' ORDER BY x::text)) AS d FROM ${ident} x`);
      rows[t.relname] = `${r.rows[0]!.n} ${r.rows[0]!.d ?? '-'}`;
    }
    const sequences: Record<string, string> = {};
    for (const s of await q<{ relname: string }>(`SELECT relname FROM pg_class WHERE relnamespace = $1::regnamespace AND relkind = 'S' ORDER BY 1`, [ns.oid])) {
      const r = await c.query<{ v: string }>(`SELECT last_value::text || ' ' || is_called::text AS v FROM ${c.escapeIdentifier(schema)}.${c.escapeIdentifier(s.relname)}`);
      sequences[s.relname] = r.rows[0]!.v;
    }
    return {
      schema: { owner: ns.owner, acl: ns.acl, comment: ns.comment, ...(opts.oids ? { oid: ns.oid } : {}) },
      objects,
      rows,
      sequences,
    };
  } finally {
    await c.end();
  }
}
