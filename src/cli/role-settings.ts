/**
 * The settings schema of each long-running role, in one place: type, default and help of every
 * setting. `gatecast retransmit|repair|agent|serve` take them as flags or from --config FILE,
 * `gatecast daemon --config gatecast.yaml` takes them per role, and the console shows them.
 */
import type { TObject } from '@sinclair/typebox';
import {
  announceIntervalMsDefault,
  controllerLeaseMsDefault,
  controllerReportIntervalMsDefault,
  multicastTtlDefault,
  orderLeaseMsDefault,
  receiveBufferBytesDefault,
  repairRateBitsPerSecondDefault,
  retransmitBufferAgeMsDefault,
  retransmitBufferBytesDefault,
} from '../limits.js';
import { choice, flag, settings, text } from './settings.js';

/** --log-format of every daemon. */
export const logFormatSetting = choice(
  ['text', 'json'],
  'json: also one JSON line per significant event on standard error',
  { default: 'text' },
);

/** --socket-buffer of every command that moves datagrams. */
export const socketBufferSetting = text(
  'BYTES',
  'receive and send buffer of each socket, e.g. 8M (the kernel caps it at net.core.rmem_max / wmem_max)',
  { default: `${receiveBufferBytesDefault / 1024 ** 2}M` },
);

/** Default module for `--token pkcs11:LABEL`: Debian's SoftHSM2. */
export const pkcs11ModuleDefault = '/usr/lib/softhsm/libsofthsm2.so';

/** A token to decode or manage a restricted session with (receive, agent, token). */
export const tokenSettings = {
  token: text(
    'FILE|pkcs11:LABEL',
    'decode a restricted session with this token: a software token file, or a PKCS#11 token label',
  ),
  'pkcs11-module': text('PATH', 'with --token pkcs11:LABEL: the PKCS#11 module', {
    default: pkcs11ModuleDefault,
    when: 'token',
  }),
  'pin-file': text('FILE', "the token's PIN (default: $GATECAST_TOKEN_PIN)"),
};

/** What the UDP servers (retransmit, repair, agent) share. */
const serverCommon = {
  'secret-file': text('FILE', "the operator's shared secret (>= 16 bytes) for control messages"),
  status: text(
    'ADDR:PORT',
    'serve GET /status (JSON), /metrics (Prometheus), /health and /ready here (e.g. 127.0.0.1:9100)',
  ),
  'status-interval': text('SECONDS', 'print one status line on standard error this often'),
  'log-format': logFormatSetting,
  'socket-buffer': socketBufferSetting,
};

/** `--source-public`: a signed session's source key (retransmit and repair servers, receive). */
export const sourcePublicSetting = text(
  'FILE',
  "a signed session: take only DATA, HEARTBEAT, END and DESCRIPTOR authenticated against this source key (64 hex digits, `token keys`' source.pub)",
);

/** `gatecast retransmit`. */
export const retransmitSettings: TObject = settings({
  'source-public': sourcePublicSetting,
  join: text('GROUP:PORT[,...]', 'sessions to buffer (more may come by SETUP)'),
  source: text('ADDR', 'join source-specific (SSM) to this sender'),
  iface: text('NAME|ADDR', 'interface to join on'),
  listen: text('ADDR:PORT', 'where NACKs, SETUP and QUALITY arrive'),
  'announce-to': text('ADDR:PORT[,...]', 'repair servers to announce to by unicast'),
  'announce-group': text('GROUP:PORT', 'announce by multicast on this group'),
  'announce-address': text('ADDR', 'address to announce for NACKs (default: --listen)'),
  peer: text('ADDR:PORT[,...]', 'other retransmit servers: QUALITY reports and election'),
  'repair-group': text('GROUP:PORT', 'answer once by multicast here, for all repair servers'),
  'buffer-bytes': text('BYTES', 'ring buffer per session', { default: retransmitBufferBytesDefault }),
  'buffer-age': text('SECONDS', 'oldest packet kept', { default: retransmitBufferAgeMsDefault / 1000 }),
  'repair-rate': text('BITS', 'repair rate per repair server', {
    default: `${repairRateBitsPerSecondDefault / 1e6}M`,
  }),
  'election-loss': text('PERCENT', 'withdraw above this own loss if another listens', { default: 5 }),
  'election-best': text('N', 'listen only when among the best N', { default: 2 }),
  period: text('SECONDS', 'announce and quality period', { default: announceIntervalMsDefault / 1000 }),
  ...serverCommon,
});

/** `gatecast repair`, and with `controller` the repair controller of flow A. */
export const repairSettings: TObject = settings({
  'source-public': sourcePublicSetting,
  join: text('GROUP:PORT', 'the session S1 to repair'),
  source: text('ADDR', 'join S1 source-specific (SSM)'),
  iface: text('NAME|ADDR', 'interface to join S1 on (and emit on)'),
  listen: text('ADDR:PORT', 'where REPAIR and ANNOUNCE arrive'),
  retransmit: text('ADDR:PORT[,...]', 'retransmit servers to ask, in preference order'),
  'announce-group': text('GROUP:PORT', 'learn retransmit servers from announcements here'),
  'repair-group': text('GROUP:PORT', 'receive repairs multicast by retransmit servers here'),
  emit: text('GROUP:PORT', 'the repaired group S2'),
  'emit-iface': text('NAME|ADDR', 'interface to emit S2 on (default --iface)'),
  ttl: text('N', 'TTL / hop limit of S2', { default: multicastTtlDefault }),
  reliable: flag('wait for every packet as long as the retransmit buffers hold (files)'),
  controller: text(
    'ADDR:PORT',
    'run the controller here (flow A): repair whatever entitled agents ask for, instead of --join',
  ),
  subscription: text('URL', 'with --controller: the subscription server, e.g. http://10.0.0.5:8080'),
  'token-file': text('FILE', "with --controller: the operator's token for it (default: $GATECAST_TOKEN)"),
  's2-pool': text(
    'GROUP:PORT[/N]',
    'with --controller: hand out S2 from N groups starting here (default N 256)',
  ),
  lease: text('SECONDS', 'with --controller: grant lease', { default: controllerLeaseMsDefault / 1000 }),
  journal: text(
    'FILE',
    'with --controller: usage reports kept here until taken (default ./data/repair-controller-PORT.journal)',
  ),
  'tls-cert': text(
    'FILE',
    'with --controller: serve agents over HTTPS, PEM certificate chain (with --tls-key)',
  ),
  'tls-key': text('FILE', 'with --controller: PEM private key of --tls-cert'),
  'report-interval': text('SECONDS', 'with --controller: report repaired bytes as usage this often', {
    default: controllerReportIntervalMsDefault / 1000,
  }),
  latency: text('MS', 'live streams: give a packet up after this budget'),
  's2-key-file': text(
    'FILE',
    'without --controller: seal S2 under this key (EPOCH:64 hex digits); S2 is plain without it',
  ),
  ...serverCommon,
});

/** `gatecast agent`. */
export const agentSettings: TObject = settings({
  watch: flag("follow the host's group memberships: deliver a mapped S1 while an application holds it"),
  map: text('S1=S2[,...]', 'with --watch: GROUP:PORT=GROUP:PORT pairs of sessions and their repaired groups'),
  controller: text(
    'URL',
    'with --watch: ask this repair controller for S2 (flow A), e.g. http://10.0.0.9:8090',
  ),
  sessions: text(
    'GROUP:PORT[,...]',
    'with --controller: the sessions S1 to have repaired when an application joins them',
  ),
  'token-file': text('FILE', "with --controller: the subscriber's bearer token (default: $GATECAST_TOKEN)"),
  from: text('GROUP:PORT', 'the repaired group S2 to join'),
  'from-iface': text('NAME|ADDR', 'interface to join S2 on'),
  deliver: text('GROUP:PORT', "S1's group and port, where the application listens"),
  'deliver-iface': text('NAME|ADDR', 'interface the application joined S1 on'),
  's2-key-file': text(
    'FILE',
    'with --from or --map: S2 is sealed under this key (the repair server’s --s2-key-file)',
  ),
  ...tokenSettings,
  'source-public': sourcePublicSetting,
  ...serverCommon,
});

/** `gatecast serve`: the subscription server, billing and the order server, with the console. */
export const serveSettings: TObject = settings({
  roles: text(
    'LIST',
    'subscription (sessions, servers), billing (rates, usage, invoices, export), order (channel orders over one-way links)',
    { default: 'subscription,billing' },
  ),
  'order-lease': text('SECONDS', 'order role: how long an order lasts without a renewal', {
    default: orderLeaseMsDefault / 1000,
  }),
  db: text('URL', 'sqlite:PATH or postgres://…', { default: 'sqlite:./data/gatecast.db' }),
  listen: text('ADDR:PORT', 'HTTP address', { default: '127.0.0.1:8080' }),
  'secret-file': text(
    'FILE',
    'control secret to send SETUP to retransmit servers with (needed for sources to buy repair)',
  ),
  currency: text('CODE', 'ISO 4217 currency of new accounts', { default: 'EUR' }),
  'tls-cert': text('FILE', 'serve HTTPS: PEM certificate chain (with --tls-key)'),
  'tls-key': text('FILE', 'serve HTTPS: PEM private key of --tls-cert'),
  'root-key': text(
    'PEM',
    'the operator root key (Ed25519): signs the grants of token enrollment and purse top-ups',
  ),
  products: text(
    'FILE',
    'with --root-key: the restricted products, a JSON array of {name, serviceKeyFile, sourcePublic, serviceEpoch?, tier?, pricePerPeriod?}',
  ),
  'log-format': logFormatSetting,
  watch: text(
    'NAME=URL[,...]',
    'status endpoints of roles to show live in the console, e.g. repair1=http://127.0.0.1:9100/status',
  ),
});

/** The `daemon:` section of gatecast.yaml: what the whole process shares. */
export const daemonSettings: TObject = settings({
  status: text(
    'ADDR:PORT',
    "the daemon's GET /status (every role), /metrics, /health and /ready (e.g. 127.0.0.1:9100)",
  ),
  'status-interval': text('SECONDS', "print each role's status line on standard error this often"),
  'log-format': logFormatSetting,
  'socket-buffer': socketBufferSetting,
});

/** Every role `gatecast daemon` runs, by its key in gatecast.yaml. */
export const roleSettingsByName: Readonly<Record<string, TObject>> = {
  serve: serveSettings,
  retransmit: retransmitSettings,
  repair: repairSettings,
  agent: agentSettings,
};
