// The standby's status page: lag over the last 24 h, the sets applied, the last apply's stages,
// the push channel and polling, and the problems in words. Data: GET status, GET status/history.
import { bytes, chartSpan, duration, facts, figure, h, lineChart, plural, problemList, relative, section, stageBars, startPage, table, time } from './common.js';

/** [from, to] spans where the push channel was down, from the samples (not the moment of connecting at start). */
function pushDownBands(samples, to) {
  const bands = [];
  let start = null;
  for (const s of samples) {
    if (s.pushConnected === false && start === null) start = s.t;
    if (s.pushConnected !== false && start !== null) {
      bands.push([start, s.t]);
      start = null;
    }
  }
  if (start !== null) bands.push([start, to]);
  return bands.filter(([a, b]) => b - a >= 30_000);
}

function render(st, hist) {
  const now = Date.parse(hist.now);
  const span = chartSpan(hist);
  const pts = (k) => hist.samples.map((s) => [s.t, s[k]]);
  // The figures as of now end each line.
  const tail = (k) => [...pts(k), [now, st[k]]];
  const bands = st.push === null ? [] : pushDownBands(hist.samples, now);
  const last = hist.applied.find((a) => a.setId === st.appliedSetId) ?? null;

  const figures = h(
    'div',
    { class: 'grid' },
    figure(
      'Recovery point age',
      st.recoveryPointAgeSeconds === null ? 'none' : duration(st.recoveryPointAgeSeconds),
      st.appliedSetId === null ? 'nothing applied: a failover now would lose everything' : `a failover now loses what the primary did since ${time(st.appliedCreatedAt)}`,
      { key: 'recovery-point-age', bad: st.recoveryPointAgeSeconds === null },
    ),
    figure('Apply lag', duration(st.applyLagSeconds), st.appliedSetId === null ? '' : `from the commit of ${st.appliedSetId} to its apply here`, { key: 'apply-lag' }),
    figure(
      'Pending sets',
      st.pendingSets === null ? 'unknown' : String(st.pendingSets),
      st.pendingSets === null ? 'the filestore could not say' : st.pendingSets === 0 ? 'nothing committed waits' : 'committed, not applied yet',
      { key: 'pending', bad: (st.pendingSets ?? 0) > 0 && st.applying === null },
    ),
    figure(
      'Primary heartbeat',
      st.primaryHeartbeatAgeSeconds === null ? 'none' : `${duration(st.primaryHeartbeatAgeSeconds)} ago`,
      st.primaryHeartbeat === null
        ? 'no heartbeat seen from the primary'
        : [st.primaryHeartbeat.primaryHost ? `from ${st.primaryHeartbeat.primaryHost}` : null, st.primaryHeartbeat.epoch !== null ? `epoch ${st.primaryHeartbeat.epoch}` : null, `via ${st.primaryHeartbeat.source === 'push' ? 'the push channel' : 'heartbeat.json'}`]
            .filter(Boolean)
            .join(', '),
      { key: 'heartbeat' },
    ),
  );

  const charts = section(
    'Lag',
    span.partial ? `since the daemon started at ${time(hist.startedAt)} (it keeps 24 h)` : 'the last 24 h',
    h(
      'div',
      { class: 'charts' },
      lineChart({ id: 'recovery-point-age', title: 'Recovery point age', series: [{ label: 'age', cls: 's1', points: tail('recoveryPointAgeSeconds') }], ...span, bands }),
      lineChart({ id: 'apply-lag', title: 'Apply lag', series: [{ label: 'lag', cls: 's2', points: tail('applyLagSeconds') }], ...span, bands, height: 120 }),
      lineChart({ id: 'pending', title: 'Pending sets', series: [{ label: 'pending', cls: 's3', points: tail('pendingSets') }], ...span, kind: 'count', bands, height: 110 }),
    ),
    bands.length > 0 ? h('p', { class: 'muted' }, 'Shaded: the push channel was down (polling covered it).') : null,
  );

  const applied = section(
    'Sets applied',
    'newest first, as this daemon saw them',
    table(
      [{ label: 'Set' }, { label: 'Created' }, { label: 'Committed' }, { label: 'Applied' }, { label: 'Apply lag', num: true }, { label: 'Size', num: true }, { label: 'Took', num: true }],
      hist.applied.map((a) => [h('span', { class: 'mono' }, a.setId), time(a.createdAt), time(a.committedAt), time(a.appliedAt), duration(a.applyLagSeconds), bytes(a.bytes), duration(a.durations?.total ?? null)]),
      { empty: 'No set applied yet.', rowClass: (i) => (hist.applied[i].setId === st.appliedSetId ? 'current' : null) },
    ),
  );

  const stages = section('Last apply', last === null ? null : `${last.setId}, applied ${time(last.appliedAt)}`, last === null ? h('p', { class: 'muted' }, 'No apply seen yet.') : stageBars(last.durations));

  const push = st.push;
  const channel = section(
    'Push channel and polling',
    null,
    facts([
      [
        'push channel',
        push === null
          ? 'not configured (primary.url): this standby polls only'
          : push.connected
            ? h('span', { class: 'state-up', id: 'push-state' }, `connected since ${time(push.since)}`)
            : h('span', { class: 'state-down', id: 'push-state' }, `down since ${time(push.since)}`),
      ],
      push === null ? null : ['primary', h('span', { class: 'mono' }, push.url)],
      push === null || push.connected ? null : ['failed attempts', `${push.failures}${push.nextAttemptAt ? `, next ${relative(push.nextAttemptAt, now)}` : ''}`],
      push?.lastError ? ['last push error', `${time(push.lastError.at)}: ${push.lastError.message}`] : null,
      st.poll === null
        ? null
        : [
            'polling latest.json',
            `every ${duration(st.poll.intervalSeconds)}; last ${st.poll.lastAt ? `${relative(st.poll.lastAt, now)} (${st.poll.lastResult ?? '?'})` : 'not yet'}${st.poll.consecutiveErrors > 0 ? `, ${plural(st.poll.consecutiveErrors, 'failure')} in a row` : ''}`,
          ],
      st.applying ? ['applying now', `${st.applying.setId ?? 'the newest set'} since ${time(st.applying.since)}`] : null,
      ['latest committed', st.latestSetId === null ? 'unknown' : h('span', {}, h('span', { class: 'mono' }, st.latestSetId), ` at ${time(st.latestCommittedAt)}`)],
      ['daemon', `pid ${st.daemon.pid ?? '?'}${st.daemon.listen ? ` on ${st.daemon.listen}` : ''}, started ${time(st.daemon.startedAt)}`],
    ]),
  );

  return {
    documentTitle: `tandem standby ${st.standbyId}: ${st.recoveryPointAgeSeconds === null ? 'nothing applied' : `recovery point ${duration(st.recoveryPointAgeSeconds)} old`}`,
    title: ['Standby ', h('span', { class: 'mono' }, st.standbyId), h('span', { class: 'sub' }, `site ${st.site}`)],
    body: [section('Problems', null, problemList(hist.problems)), figures, charts, applied, h('div', { class: 'columns' }, stages, channel)],
  };
}

startPage(render);
