// The primary's status page: the newest set's age and each standby's lag over the last 24 h, the
// last backups, the heartbeat, the standbys connected, fencing, and the problems in words.
// Data: GET status, GET status/history.
import { bytes, chartSpan, duration, facts, figure, h, lineChart, relative, section, stageBars, startPage, table, time, problemList } from './common.js';

const CLASSES = ['s2', 's3', 's4', 's5'];

/** A primary serving several sites: the others, each a link to its page (hist.sites). */
function siteLinks(hist) {
  if (!Array.isArray(hist.sites) || hist.sites.length < 2) return [];
  const links = hist.sites.map((s) =>
    s.site === hist.site ? h('strong', {}, s.site) : h('a', { href: `?site=${encodeURIComponent(s.site)}`, class: s.running ? null : 'state-down' }, s.site),
  );
  return [h('span', { class: 'sub', id: 'sites' }, 'sites: ', ...links.flatMap((l, i) => (i === 0 ? [l] : [' · ', l])))];
}

function render(st, hist) {
  if (st.running === false) {
    // A site of this daemon whose start was refused or failed: why, and the other sites.
    return {
      documentTitle: `tandem primary: site ${st.site} not running`,
      title: ['Primary ', h('span', { class: 'sub' }, `site ${st.site}: not running`), ...siteLinks(hist)],
      body: [section('Problems', null, problemList(hist.problems))],
    };
  }
  const now = Date.parse(hist.now);
  const span = chartSpan(hist);
  const newestAge = st.latest ? Math.max(0, (now - Date.parse(st.latest.createdAt)) / 1000) : null;
  const ids = [...new Set([...hist.configuredStandbys, ...hist.samples.flatMap((s) => Object.keys(s.standbys))])].sort();
  const series = [
    { label: 'newest set', cls: 's1', points: [...hist.samples.map((s) => [s.t, s.newestSetAgeSeconds]), [now, newestAge]] },
    ...ids.map((id, i) => ({
      label: id,
      cls: CLASSES[i % CLASSES.length],
      points: [...hist.samples.map((s) => [s.t, s.standbys[id] ?? null]), [now, st.standbys.find((x) => x.standbyId === id)?.lagSeconds ?? null]],
    })),
  ];
  const last = st.lastBackup;
  const lastRun = hist.backups[0] ?? null;
  const connected = st.standbys.length;

  const figures = h(
    'div',
    { class: 'grid' },
    figure('Newest set', newestAge === null ? 'none' : `${duration(newestAge)} old`, st.latest ? st.latest.setId : 'no set committed yet', { key: 'newest-set', bad: newestAge === null }),
    figure(
      'Last backup',
      last === null ? 'none' : last.outcome,
      last === null ? 'no backup run seen' : `${relative(last.time, now)}${last.duration !== null ? `, took ${duration(last.duration)}` : ''}${last.bytes !== null ? `, ${bytes(last.bytes)}` : ''}`,
      { key: 'last-backup', bad: last !== null && last.outcome !== 'ok' },
    ),
    figure('Next backup', st.nextRunAt ? relative(st.nextRunAt, now) : 'none', st.nextRunAt ? `${time(st.nextRunAt)} (${st.schedule}, ${st.timezone})` : st.fenced ? 'fenced: no more backups' : '', { key: 'next-backup' }),
    figure(
      'Standbys connected',
      `${connected} of ${hist.configuredStandbys.length}`,
      st.standbys.map((s) => `${s.standbyId}: ${s.lagSeconds === 0 ? 'up to date' : `${duration(s.lagSeconds)} behind`}`).join('; ') || 'none on the push channel',
      { key: 'standbys', bad: connected < hist.configuredStandbys.length },
    ),
  );

  const charts = section(
    'Lag',
    span.partial ? `since the daemon started at ${time(hist.startedAt)} (it keeps 24 h)` : 'the last 24 h',
    h(
      'div',
      { class: 'charts' },
      lineChart({ id: 'newest-set-age', title: 'Age of the newest set (what losing this server would lose)', series: series.slice(0, 1), ...span }),
      lineChart({ id: 'standby-lag', title: "Each standby's lag, as it reported it over the push channel", series: series.slice(1), ...span, height: 130, named: true }),
    ),
  );

  const backups = section(
    'Backups',
    'newest first, as this daemon saw them',
    table(
      [{ label: 'Set' }, { label: 'Ended' }, { label: 'Trigger' }, { label: 'Outcome', wrap: true }, { label: 'Took', num: true }, { label: 'Size', num: true }],
      hist.backups.map((b) => [
        b.setId ? h('span', { class: 'mono' }, b.setId) : '–',
        time(b.at),
        b.trigger ?? '–',
        h('span', { class: `outcome-${b.outcome}`, title: b.error ?? null }, b.outcome === 'ok' ? 'ok' : `${b.outcome}${b.error ? `: ${b.error}` : ''}`),
        duration(b.durationSeconds),
        bytes(b.storedBytes),
      ]),
      { empty: 'No backup run seen yet.' },
    ),
  );

  const stages = section('Last backup', lastRun?.setId ? `${lastRun.setId}, ${time(lastRun.at)}` : null, lastRun?.durations ? stageBars(lastRun.durations) : h('p', { class: 'muted' }, 'No committed backup seen yet.'));

  const standbys = section(
    'Standbys',
    'on the push channel',
    table(
      [{ label: 'Standby' }, { label: 'From' }, { label: 'Connected since' }, { label: 'Applied set' }, { label: 'Applied at' }, { label: 'Lag', num: true }],
      st.standbys.map((s) => [h('span', { class: 'mono' }, s.standbyId ?? '?'), s.remoteAddress, time(s.connectedSince), s.appliedSetId ? h('span', { class: 'mono' }, s.appliedSetId) : 'none', time(s.appliedAt), s.lagSeconds === 0 ? 'up to date' : duration(s.lagSeconds)]),
      { empty: hist.configuredStandbys.length === 0 ? 'No standby is listed in the config (standbys:).' : 'No standby is connected.' },
    ),
  );

  const state = section(
    'Primary',
    null,
    facts([
      ['fencing', st.fenced ? h('span', { class: 'state-down' }, `FENCED at ${time(st.fenced.at)}: ${st.fenced.why}`) : h('span', { class: 'state-up' }, `not fenced (epoch ${st.epoch ?? '?'})`)],
      ['heartbeat', st.heartbeat.lastWrittenAt ? `written ${relative(st.heartbeat.lastWrittenAt, now)} (${time(st.heartbeat.lastWrittenAt)})` : 'not written yet'],
      st.heartbeat.lastError ? ['heartbeat error', st.heartbeat.lastError] : null,
      st.backupRunning ? ['backup running', `${st.backupRunning.trigger} since ${time(st.backupRunning.startedAt)}`] : null,
      st.switchover ? ['switchover', `${st.switchover.state} (${st.switchover.step}) with ${st.switchover.standbyId} since ${time(st.switchover.since)}`] : null,
      ['agent', `${st.primaryId} on ${st.primaryHost}`],
      ['daemon', `pid ${st.pid}, started ${time(st.startedAt)}`],
    ]),
  );

  return {
    documentTitle: `tandem primary ${st.primaryHost}: ${last === null ? 'no backup yet' : `last backup ${last.outcome}`}`,
    title: ['Primary ', h('span', { class: 'mono' }, st.primaryHost), h('span', { class: 'sub' }, `site ${st.site}, epoch ${st.epoch ?? '?'}`), ...siteLinks(hist)],
    body: [section('Problems', null, problemList(hist.problems)), figures, charts, backups, standbys, h('div', { class: 'columns' }, stages, state)],
  };
}

startPage(render);
