// The gatecast operator console: signs in with the operator token (kept in this tab's
// sessionStorage), follows GET /console/api/events (server-sent events read through fetch, so the
// token travels in the Authorization header) and draws each page from the latest snapshot.
// Operator actions call the subscription server's own API (docs/api.md).

const tokenKey = 'gatecast-operator-token';
const pages = ['sessions', 'retransmit', 'repair', 'subscribers', 'ledger', 'orders', 'settings'];
const $ = (id) => document.getElementById(id);

let snapshot;
let stream;

/** An element with attributes and children (strings become text, never HTML). */
function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null && value !== false) {
      element.setAttribute(name, String(value));
    }
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null) {
      element.append(child instanceof Node ? child : String(child));
    }
  }
  return element;
}

/** Fills a table from column definitions [{ title, value(row), number? }]. */
function fillTable(table, columns, rows, emptyText) {
  table.replaceChildren(
    h(
      'thead',
      {},
      h(
        'tr',
        {},
        columns.map((c) => h('th', { class: c.number ? 'number' : undefined }, c.title)),
      ),
    ),
    h(
      'tbody',
      {},
      rows.length === 0
        ? h('tr', {}, h('td', { class: 'empty', colspan: columns.length }, emptyText))
        : rows.map((row) =>
            h(
              'tr',
              { 'data-id': row.id },
              columns.map((c) => h('td', { class: c.number ? 'number' : undefined }, c.value(row))),
            ),
          ),
    ),
  );
}

const token = () => sessionStorage.getItem(tokenKey);

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: {
      authorization: `Bearer ${token()}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const data = text === '' ? undefined : JSON.parse(text);
  if (!response.ok) {
    throw new Error(`${response.status} ${data?.error ?? ''}: ${data?.message ?? text}`);
  }
  return data;
}

const percent = (value) => (value === undefined || value === null ? '–' : `${value.toFixed(2)} %`);
const money = (minor, currency) => `${(minor / 100).toFixed(2)} ${currency}`;
const time = (iso) => (iso ? new Date(iso).toLocaleString() : '–');
const nameOf = (id) => snapshot?.parties.find((p) => p.id === id)?.name ?? id?.slice(0, 8) ?? '–';

/** Draws lines over time on a canvas; series: [{ values: [{at, value}], color }]. */
function drawGraph(canvas, series, maxFloor) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 360;
  const height = canvas.clientHeight || 140;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const g = canvas.getContext('2d');
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  const all = series.flatMap((s) => s.values);
  const now = Date.now();
  const start = Math.min(now - 60_000, ...all.map((p) => p.at));
  const max = Math.max(maxFloor, ...all.map((p) => p.value)) * 1.15;
  const left = 34;
  const bottom = height - 16;
  g.strokeStyle = '#d9dde5';
  g.fillStyle = '#5d6678';
  g.font = '10px system-ui, sans-serif';
  for (const fraction of [0, 0.5, 1]) {
    const y = bottom - fraction * (bottom - 6);
    g.beginPath();
    g.moveTo(left, y);
    g.lineTo(width, y);
    g.stroke();
    g.fillText((max * fraction).toFixed(max < 10 ? 1 : 0), 2, y + 3);
  }
  g.fillText(`${Math.round((now - start) / 1000)} s ago`, left, height - 3);
  g.fillText('now', width - 22, height - 3);
  for (const s of series) {
    g.strokeStyle = s.color;
    g.lineWidth = 2;
    g.beginPath();
    s.values.forEach((p, i) => {
      const x = left + ((p.at - start) / Math.max(1, now - start)) * (width - left - 4);
      const y = bottom - (p.value / max) * (bottom - 6);
      if (i === 0) {
        g.moveTo(x, y);
      } else {
        g.lineTo(x, y);
      }
    });
    g.stroke();
  }
  canvas.dataset.points = String(all.length);
  canvas.dataset.last = JSON.stringify(series.map((s) => s.values.at(-1)?.value ?? null));
}

function figure(value, label, className) {
  return h('div', { class: `figure ${className ?? ''}` }, h('b', {}, value), h('span', {}, label));
}

const endpointsOf = (role) =>
  (snapshot?.live ?? []).filter(
    (e) => e.role === role || (role === 'repair' && e.role === 'repair-controller'),
  );

function unreachable(endpoints) {
  return (snapshot?.live ?? [])
    .filter((e) => !e.reachable && !endpoints.includes(e))
    .map((e) =>
      h(
        'div',
        { class: 'card' },
        h('h4', {}, e.name),
        h('div', { class: 'sub' }, e.url),
        h('span', { class: 'badge bad' }, e.error ?? 'unreachable'),
      ),
    );
}

function renderSessions() {
  const cards = [];
  for (const e of snapshot.live.filter((x) => x.role === 'repair' && x.status)) {
    const s = e.status;
    const due = s.emitted + s.unrecoverable;
    const before = due === 0 ? 0 : ((s.recovered + s.unrecoverable) / due) * 100;
    const after = due === 0 ? 0 : (s.unrecoverable / due) * 100;
    const canvas = h('canvas', { class: 'loss-graph', 'data-endpoint': e.name });
    cards.push(
      h(
        'div',
        { class: 'card receiver', 'data-endpoint': e.name },
        h(
          'h4',
          {},
          `${e.name} `,
          h('span', { class: s.unrecoverable === 0 ? 'badge good' : 'badge bad' }, s.mode),
        ),
        h(
          'div',
          { class: 'sub' },
          `S1 ${s.sessionId === undefined ? '(waiting)' : `session ${s.sessionId}`} → S2 ${s.emit}`,
        ),
        h(
          'div',
          { class: 'figures' },
          figure(percent(before), 'loss before repair', 'before'),
          figure(percent(after), 'loss after repair', 'after'),
          figure(s.recovered, 'recovered'),
          figure(s.unrecoverable, 'unrecoverable'),
          figure(s.emitted, 'emitted on S2'),
        ),
        canvas,
        h(
          'div',
          { class: 'legend' },
          h('span', { class: 'before' }, '— before repair'),
          ' ',
          h('span', { class: 'after' }, '— after repair'),
          ' (% per second)',
        ),
      ),
    );
    requestAnimationFrame(() =>
      drawGraph(
        canvas,
        [
          {
            color: '#d9731a',
            values: e.history
              .filter((p) => p.lossBeforePercent !== undefined)
              .map((p) => ({ at: p.at, value: p.lossBeforePercent })),
          },
          {
            color: '#1b8a4b',
            values: e.history
              .filter((p) => p.lossAfterPercent !== undefined)
              .map((p) => ({ at: p.at, value: p.lossAfterPercent })),
          },
        ],
        1,
      ),
    );
  }
  for (const e of snapshot.live.filter((x) => x.role === 'agent' && x.status)) {
    const s = e.status;
    const sessions = s.sessions ?? [{ s1: s.deliver, active: true, delivery: s }];
    const delivered = sessions.reduce((sum, x) => sum + (x.delivery?.delivered ?? 0), 0);
    const gaps = sessions.reduce((sum, x) => sum + (x.delivery?.gapsSeen ?? 0), 0);
    const canvas = h('canvas', { class: 'loss-graph', 'data-endpoint': e.name });
    cards.push(
      h(
        'div',
        { class: 'card receiver', 'data-endpoint': e.name },
        h('h4', {}, `${e.name} `, h('span', { class: 'badge' }, 'agent')),
        sessions.map((x) =>
          h(
            'div',
            { class: 'sub' },
            `${x.s1}${x.delivery ? ` → ${x.delivery.deliver}` : ''}: ${x.active ? `delivering from S2 ${x.s2 ?? x.delivery?.from ?? ''}` : x.refused ? `refused: ${x.refused}` : 'idle'}`,
          ),
        ),
        h(
          'div',
          { class: 'figures' },
          figure(
            percent(delivered + gaps === 0 ? 0 : (gaps / (delivered + gaps)) * 100),
            'loss after repair',
            'after',
          ),
          figure(delivered, 'datagrams delivered'),
          figure(gaps, 'gaps seen'),
        ),
        canvas,
        h(
          'div',
          { class: 'legend' },
          h('span', { class: 'after' }, '— loss after repair at this receiver'),
          ' (% per second)',
        ),
      ),
    );
    requestAnimationFrame(() =>
      drawGraph(
        canvas,
        [
          {
            color: '#1b8a4b',
            values: e.history
              .filter((p) => p.lossAfterPercent !== undefined)
              .map((p) => ({ at: p.at, value: p.lossAfterPercent })),
          },
        ],
        1,
      ),
    );
  }
  const shown = snapshot.live.filter((x) => (x.role === 'repair' || x.role === 'agent') && x.status);
  $('receivers').replaceChildren(
    ...(cards.length === 0
      ? [
          h(
            'p',
            { class: 'empty' },
            'No repair server or agent is watched (gatecast serve --watch NAME=URL).',
          ),
        ]
      : cards),
    ...unreachable(shown).filter(() => true),
  );
  fillTable(
    $('session-table'),
    [
      { title: 'Name', value: (r) => r.name },
      { title: 'Group (S1)', value: (r) => r.group },
      { title: 'Source', value: (r) => nameOf(r.owner) },
      { title: 'Price', value: (r) => r.price },
      { title: 'Repair', value: (r) => (r.repair ? 'bought' : '–') },
      {
        title: 'State',
        value: (r) => h('span', { class: r.state === 'open' ? 'badge good' : 'badge' }, r.state),
      },
      { title: 'Started', value: (r) => time(r.startedAt) },
      { title: 'Ended', value: (r) => time(r.endedAt) },
    ],
    snapshot.sessions,
    'No session registered.',
  );
}

function renderRetransmit() {
  const endpoints = endpointsOf('retransmit').filter((e) => e.status);
  const cards = endpoints.map((e) => {
    const s = e.status;
    const canvas = h('canvas', { class: 'loss-graph', 'data-endpoint': e.name });
    const groups = s.sessions.map((x) => x.group);
    const colors = ['#1f5fbf', '#d9731a', '#1b8a4b', '#8e44ad', '#b42318'];
    requestAnimationFrame(() =>
      drawGraph(
        canvas,
        groups.map((group, i) => ({
          color: colors[i % colors.length],
          values: e.history
            .filter((p) => p.sessionLossPercent?.[group] !== undefined)
            .map((p) => ({ at: p.at, value: p.sessionLossPercent[group] })),
        })),
        1,
      ),
    );
    const table = h('table');
    fillTable(
      table,
      [
        { title: 'Session', value: (r) => r.group },
        {
          title: 'Election',
          value: (r) => h('span', { class: r.state === 'listening' ? 'badge good' : 'badge bad' }, r.state),
        },
        { title: 'Own loss', value: (r) => percent(r.lossPercent), number: true },
        { title: 'Held', value: (r) => r.heldPackets, number: true },
        { title: 'Members', value: (r) => r.members, number: true },
      ],
      s.sessions,
      'No session joined.',
    );
    return h(
      'div',
      { class: 'card', 'data-endpoint': e.name },
      h('h4', {}, e.name),
      h('div', { class: 'sub' }, `listening on ${s.listen}, sender ${s.senderId}`),
      h(
        'div',
        { class: 'figures' },
        figure(s.nacksReceived, 'NACKs received'),
        figure(s.repairsSent, 'repairs sent'),
        figure(s.notHeldSent, 'not held'),
        figure(s.rateLimited, 'rate-limited'),
        figure(s.electionChanges ?? 0, 'election changes'),
      ),
      table,
      canvas,
      h('div', { class: 'legend' }, 'own loss per session, % per period'),
    );
  });
  $('retransmit-cards').replaceChildren(
    ...(cards.length === 0 ? [h('p', { class: 'empty' }, 'No retransmit server is watched.')] : cards),
  );
  fillTable(
    $('retransmit-registry'),
    [
      { title: 'Name', value: (r) => r.name },
      { title: 'Control address', value: (r) => r.address },
    ],
    snapshot.servers.filter((r) => r.kind === 'retransmit'),
    'No retransmit server registered.',
  );
}

function renderRepair() {
  const cards = endpointsOf('repair')
    .filter((e) => e.status)
    .map((e) => {
      const s = e.status;
      if (e.role === 'repair-controller') {
        const table = h('table');
        fillTable(
          table,
          [
            { title: 'S1', value: (r) => r.s1 },
            { title: 'S2', value: (r) => r.s2 },
            { title: 'Subscribers', value: (r) => r.subscribers, number: true },
            { title: 'Recovered', value: (r) => r.recovered, number: true },
          ],
          s.modules,
          'No repair module running.',
        );
        return h(
          'div',
          { class: 'card', 'data-endpoint': e.name },
          h('h4', {}, `${e.name} `, h('span', { class: 'badge' }, 'controller')),
          h(
            'div',
            { class: 'figures' },
            figure(s.grants, 'grants'),
            figure(s.refusals, 'refusals'),
            figure(s.reportsPending, 'reports pending'),
          ),
          table,
        );
      }
      const table = h('table');
      fillTable(
        table,
        [
          { title: 'Retransmit server', value: (r) => r.address },
          {
            title: 'State',
            value: (r) =>
              h(
                'span',
                { class: r.listening ? 'badge good' : 'badge bad' },
                r.listening ? 'asked' : 'passed over',
              ),
          },
          { title: 'Loss', value: (r) => percent(r.lossPercent), number: true },
          { title: 'Timeouts', value: (r) => r.timeouts, number: true },
          { title: 'RTT', value: (r) => (r.rttMs === undefined ? '–' : `${r.rttMs} ms`), number: true },
        ],
        s.servers,
        'No retransmit server known yet.',
      );
      return h(
        'div',
        { class: 'card', 'data-endpoint': e.name },
        h('h4', {}, e.name),
        h('div', { class: 'sub' }, `${s.mode}, control ${s.listen}, S2 ${s.emit}`),
        h(
          'div',
          { class: 'figures' },
          figure(s.nacksSent, 'NACKs sent'),
          figure(s.timeouts, 'failovers (timeouts)'),
          figure(
            s.repairExtraDelayMs ? `${s.repairExtraDelayMs.p50} / ${s.repairExtraDelayMs.p99} ms` : '–',
            'repair delay p50 / p99',
          ),
          figure(s.missingNow, 'missing now'),
        ),
        table,
      );
    });
  $('repair-cards').replaceChildren(
    ...(cards.length === 0 ? [h('p', { class: 'empty' }, 'No repair server is watched.')] : cards),
  );
  fillTable(
    $('repair-registry'),
    [
      { title: 'Name', value: (r) => r.name },
      { title: 'Control address', value: (r) => r.address },
    ],
    snapshot.servers.filter((r) => r.kind === 'repair'),
    'No repair server registered.',
  );
}

function renderSubscribers() {
  const subscribers = snapshot.parties.filter((p) => p.kind === 'subscriber');
  const select = $('grant-subscriber');
  const chosen = select.value;
  select.replaceChildren(...subscribers.map((p) => h('option', { value: p.id }, p.name)));
  if (subscribers.some((p) => p.id === chosen)) {
    select.value = chosen;
  }
  fillTable(
    $('subscriber-table'),
    [
      { title: 'Subscriber', value: (r) => r.name },
      {
        title: 'Entitlements',
        value: (r) => {
          const grants = snapshot.entitlements.filter((e) => e.subscriber === r.id);
          return grants.length === 0
            ? '–'
            : grants.map(
                (e) =>
                  h(
                    'span',
                    { class: 'badge entitlement' },
                    `${e.service}${e.monthly === null ? '' : ` ${money(e.monthly, 'EUR').split(' ')[0]}/month`}`,
                  ),
                ' ',
              );
        },
      },
      { title: 'Since', value: (r) => time(r.createdAt) },
      {
        title: 'Token',
        value: (r) =>
          r.revokedAt
            ? h('span', { class: 'badge bad' }, `revoked ${time(r.revokedAt)}`)
            : h('span', { class: 'badge good' }, 'valid'),
      },
      {
        title: '',
        value: (r) =>
          r.revokedAt
            ? ''
            : h('button', { class: 'secondary revoke', type: 'button', 'data-party': r.id }, 'Revoke token'),
      },
    ],
    subscribers,
    'No subscriber yet.',
  );
}

function renderLedger() {
  $('charge-totals').replaceChildren(
    ...Object.entries(snapshot.charges).map(([currency, c]) =>
      figure(`${c.count} transfers, ${money(c.amountMinor, currency)}`, `posted (${currency})`),
    ),
  );
  const accountSelect = $('invoice-account');
  const chosen = accountSelect.value;
  accountSelect.replaceChildren(
    ...snapshot.accounts.map((a) => h('option', { value: a.id }, `${a.name} (${a.kind})`)),
  );
  if (snapshot.accounts.some((a) => a.id === chosen)) {
    accountSelect.value = chosen;
  }
  fillTable(
    $('account-table'),
    [
      { title: 'Account', value: (r) => r.name },
      { title: 'Kind', value: (r) => r.kind },
      { title: 'Balance', value: (r) => money(r.balance, r.currency), number: true },
    ],
    snapshot.accounts,
    'No account.',
  );
  fillTable(
    $('transfer-table'),
    [
      { title: 'When', value: (r) => time(r.createdAt) },
      { title: 'Memo', value: (r) => r.memo },
      { title: 'Debit', value: (r) => nameOf(r.debit) },
      { title: 'Credit', value: (r) => nameOf(r.credit) },
      { title: 'Amount', value: (r) => money(r.amount, r.currency), number: true },
    ],
    snapshot.transfers,
    'No transfer posted yet.',
  );
}

const bits = (rate) =>
  rate >= 1e9
    ? `${(rate / 1e9).toFixed(2)} Gbit/s`
    : rate >= 1e6
      ? `${(rate / 1e6).toFixed(1)} Mbit/s`
      : `${(rate / 1e3).toFixed(0)} kbit/s`;

/** The orders page: links with their capacity in use, services with their refcount, active orders. */
function renderOrders() {
  const orders = snapshot.orders ?? { links: [], services: [], active: [], counts: {} };
  $('order-totals').replaceChildren(
    ...['active', 'cancelled', 'expired', 'preempted'].map((state) =>
      figure(orders.counts[state] ?? 0, `${state} orders`),
    ),
  );
  $('link-cards').replaceChildren(
    ...(orders.links.length === 0
      ? [
          h(
            'p',
            { class: 'empty' },
            'No link defined (gatecast admin orders link, or PUT /v1/order/links/NAME).',
          ),
        ]
      : orders.links.map((link) => {
          const share = link.capacity === 0 ? 0 : Math.min(100, (link.used / link.capacity) * 100);
          const services = orders.services.filter((s) => s.link === link.name);
          return h(
            'div',
            { class: 'card link', 'data-id': link.name },
            h('h4', {}, `${link.name} `, h('span', { class: 'badge' }, link.router)),
            h(
              'div',
              { class: 'sub' },
              `policy ${link.policy}, ${services.length} service${services.length === 1 ? '' : 's'}`,
            ),
            h(
              'div',
              { class: 'figures' },
              figure(bits(link.used), 'in use'),
              figure(bits(link.capacity), 'capacity'),
              figure(`${share.toFixed(0)} %`, 'used'),
              figure(services.filter((s) => s.boxes > 0).length, 'services on'),
            ),
            h(
              'div',
              {
                class: 'meter',
                role: 'meter',
                'aria-valuenow': share.toFixed(0),
                'aria-valuemin': 0,
                'aria-valuemax': 100,
              },
              h('span', { class: share >= 90 ? 'full' : undefined, style: `width: ${share.toFixed(1)}%` }),
            ),
          );
        })),
  );
  fillTable(
    $('order-service-table'),
    [
      { title: 'Service', value: (r) => r.name },
      { title: 'Link', value: (r) => r.link },
      { title: 'Group', value: (r) => (r.relayTo ? `${r.group} → ${r.relayTo}` : r.group) },
      { title: 'Rate', value: (r) => bits(r.bitRate), number: true },
      { title: 'Priority', value: (r) => r.priority, number: true },
      { title: 'Price', value: (r) => r.price },
      { title: 'Boxes (refcount)', value: (r) => r.boxes, number: true },
      {
        title: 'State',
        value: (r) =>
          r.boxes > 0
            ? h('span', { class: 'badge good' }, `routed since ${time(r.activeSince)}`)
            : h('span', { class: 'badge' }, 'off'),
      },
    ],
    orders.services,
    'No service defined.',
  );
  fillTable(
    $('order-table'),
    [
      { title: 'Order', value: (r) => h('code', {}, r.id.slice(0, 12)) },
      { title: 'Box', value: (r) => nameOf(r.box) },
      { title: 'Service', value: (r) => r.service },
      { title: 'Link', value: (r) => r.link },
      { title: 'Ordered', value: (r) => time(r.createdAt) },
      { title: 'Lease until', value: (r) => time(r.expiresAt) },
      {
        title: '',
        value: (r) =>
          h('button', { class: 'secondary cancel', type: 'button', 'data-order': r.id }, 'Cancel'),
      },
    ],
    orders.active,
    'No active order.',
  );
}

let settingsSchemas;

/** The Settings page: the roles' settings schemas, read once (they do not change while serving). */
function renderSettings() {
  if (settingsSchemas === undefined) {
    settingsSchemas = null;
    api('GET', '/console/api/settings')
      .then((body) => {
        settingsSchemas = body.roles;
        renderSettings();
      })
      .catch(() => {
        settingsSchemas = undefined;
      });
    return;
  }
  if (settingsSchemas === null || $('settings-tables').childElementCount > 0) {
    return;
  }
  $('settings-tables').replaceChildren(
    ...Object.entries(settingsSchemas).flatMap(([role, schema]) => {
      const table = h('table', { 'data-role': role });
      fillTable(
        table,
        [
          { title: 'setting', value: (r) => h('code', {}, r.name) },
          { title: 'value', value: (r) => r.value },
          { title: 'default', value: (r) => r.default },
          { title: 'meaning', value: (r) => r.help },
        ],
        Object.entries(schema.properties ?? {}).map(([name, s]) => ({
          id: name,
          name,
          value: s['x-value'] ?? (s.type === 'boolean' ? 'true|false' : ''),
          default: s.default === undefined ? '–' : String(s.default),
          help: s.description ?? '',
        })),
        'No settings.',
      );
      return [h('h3', {}, role), table];
    }),
  );
}

function render() {
  if (!snapshot) {
    return;
  }
  renderSessions();
  renderRetransmit();
  renderRepair();
  renderSubscribers();
  renderLedger();
  renderOrders();
  renderSettings();
  const state = $('live-state');
  state.textContent = `live · ${new Date(snapshot.at).toLocaleTimeString()}`;
  state.className = 'state live';
  document.body.dataset.snapshotAt = snapshot.at;
}

function showPage() {
  const signedIn = token() !== null;
  const page = pages.includes(location.hash.slice(1)) ? location.hash.slice(1) : 'sessions';
  $('login').hidden = signedIn;
  $('nav').hidden = !signedIn;
  $('sign-out').hidden = !signedIn;
  for (const name of pages) {
    $(name).hidden = !signedIn || name !== page;
  }
  for (const link of $('nav').querySelectorAll('a')) {
    link.classList.toggle('current', link.getAttribute('href') === `#${page}`);
  }
  render();
}

/** Follows the live stream until signed out; reconnects after a pause when it breaks. */
async function follow() {
  stream?.abort();
  const controller = new AbortController();
  stream = controller;
  while (!controller.signal.aborted && token() !== null) {
    try {
      const response = await fetch('/console/api/events', {
        headers: { authorization: `Bearer ${token()}` },
        signal: controller.signal,
      });
      if (response.status === 401 || response.status === 403) {
        signOut('The token was refused: sign in again.');
        return;
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) {
          break;
        }
        buffer += value;
        let end = buffer.indexOf('\n\n');
        while (end >= 0) {
          const message = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = message
            .split('\n')
            .filter((line) => line.startsWith('data: '))
            .map((line) => line.slice(6))
            .join('\n');
          if (message.startsWith('event: snapshot') && data !== '') {
            snapshot = JSON.parse(data);
            render();
          }
          end = buffer.indexOf('\n\n');
        }
      }
    } catch (error) {
      if (controller.signal.aborted) {
        return;
      }
      $('live-state').textContent = `reconnecting (${error.message})`;
    }
    $('live-state').className = 'state stale';
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function signOut(message) {
  stream?.abort();
  sessionStorage.removeItem(tokenKey);
  snapshot = undefined;
  $('login-error').textContent = message ?? '';
  $('live-state').textContent = 'signed out';
  $('live-state').className = 'state';
  showPage();
}

async function signIn(value) {
  sessionStorage.setItem(tokenKey, value);
  try {
    const me = await api('GET', '/v1/whoami');
    if (me.kind !== 'operator') {
      signOut(`This is the token of a ${me.kind}: the console is the operator's.`);
      return;
    }
  } catch (error) {
    signOut(`Sign-in refused: ${error.message}`);
    return;
  }
  $('login-error').textContent = '';
  showPage();
  void follow();
}

function say(text, isError) {
  const result = $('action-result');
  result.textContent = text;
  result.className = isError ? 'error' : 'hint';
}

$('login-form').addEventListener('submit', (event) => {
  event.preventDefault();
  void signIn($('token').value.trim());
  $('token').value = '';
});
$('sign-out').addEventListener('click', () => signOut());
$('grant-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const monthly = $('grant-monthly').value;
  const body = { subscriber: $('grant-subscriber').value, service: $('grant-service').value };
  if (monthly !== '') {
    body.monthly = Number(monthly);
  }
  try {
    await api('POST', '/v1/entitlements', body);
    say(`Granted ${body.service} to ${nameOf(body.subscriber)}.`);
  } catch (error) {
    say(`Grant refused: ${error.message}`, true);
  }
});
$('subscriber-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    const created = await api('POST', '/v1/subscribers', { name: $('subscriber-name').value.trim() });
    $('subscriber-token').textContent = `${created.name}'s token (shown once): ${created.token}`;
    $('subscriber-name').value = '';
  } catch (error) {
    say(`Not added: ${error.message}`, true);
  }
});
$('subscriber-table').addEventListener('click', async (event) => {
  const party = event.target.closest('button.revoke')?.dataset.party;
  if (party === undefined) {
    return;
  }
  try {
    await api('DELETE', `/v1/tokens/${party}`);
    say(`Revoked the token of ${nameOf(party)}.`);
  } catch (error) {
    say(`Not revoked: ${error.message}`, true);
  }
});
$('order-table').addEventListener('click', async (event) => {
  const order = event.target.closest('button.cancel')?.dataset.order;
  if (order === undefined) {
    return;
  }
  const result = $('order-result');
  try {
    const ended = await api('DELETE', `/v1/order/orders/${encodeURIComponent(order)}`);
    result.textContent = `Cancelled order ${order.slice(0, 12)} of ${nameOf(ended.box)} (${ended.service}).`;
    result.className = 'hint';
  } catch (error) {
    result.textContent = `Not cancelled: ${error.message}`;
    result.className = 'error';
  }
});
$('invoice-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const account = $('invoice-account').value;
  const period = $('invoice-period').value;
  try {
    const invoice = await api(
      'GET',
      `/v1/invoices?account=${encodeURIComponent(account)}&period=${encodeURIComponent(period)}`,
    );
    fillTable(
      $('invoice-table'),
      [
        { title: 'When', value: (r) => time(r.at) },
        { title: 'Memo', value: (r) => r.memo },
        { title: 'Amount', value: (r) => money(r.amount, invoice.currency ?? 'EUR'), number: true },
      ],
      invoice.lines ?? [],
      `No transfer in ${period}.`,
    );
  } catch (error) {
    say(`No invoice: ${error.message}`, true);
  }
});
window.addEventListener('hashchange', showPage);
const period = new Date().toISOString().slice(0, 7);
$('invoice-period').value = period;
showPage();
if (token() !== null) {
  void signIn(token());
}
