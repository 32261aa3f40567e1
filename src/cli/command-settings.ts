/**
 * The settings schema of each command that is not a long-running role, in one place: type, default
 * and help of every flag of `gatecast send`, `receive`, `stb`, `admin` and each `token` subcommand.
 * The flags, the --help text and the --config FILE of each command are made from them (like the
 * roles' schemas in src/cli/role-settings.ts), so a default is written once.
 *
 * A default that only means something with another flag names it (`when`): it is filled in only
 * when that flag is given, so `send` without --restricted is never given a --suite.
 */
import type { TObject } from '@sinclair/typebox';
import {
  adaptRateFloorFractionDefault,
  lastResortBufferBytesDefault,
  lastResortLingerMsMaxDefault,
  multicastTtlDefault,
  packetPayloadBytesDefault,
  packetPayloadBytesMin,
  receiveTimeoutMsDefault,
} from '../limits.js';
import { dataPayloadBytesMax } from '../protocol/sizes.js';
import {
  pkcs11ModuleDefault,
  socketBufferSetting,
  sourcePublicSetting,
  tokenSettings,
} from './role-settings.js';
import { flag, settings, text } from './settings.js';

export { pkcs11ModuleDefault };

/** `send` for a restricted (or signed) session. */
const restrictedSend = {
  restricted: flag('encrypt and sign the session: only tokens entitled to --service decode it'),
  signed: flag(
    'sign the session (readable, authentic): receivers and servers given --source-public take only what --source-key signed',
  ),
  service: text('NAME', 'with --restricted: the product the session belongs to'),
  'service-key-file': text(
    'FILE',
    'with --restricted: the service key of this product and epoch (64 hex digits)',
  ),
  'service-epoch': text('N', 'with --restricted: the service key epoch', { default: 1, when: 'restricted' }),
  'source-key': text(
    'PEM',
    'with --restricted or --signed: the Ed25519 key that signs KEY messages and manifests',
  ),
  suite: text('NAME', 'with --restricted: aes-256-gcm, aes-128-gcm or chacha20-poly1305', {
    default: 'aes-256-gcm',
    when: 'restricted',
  }),
  'crypto-period': text(
    'SECONDS',
    'with --restricted: how long one traffic key is used (a run has 65,535 of them)',
    {
      default: 10,
      when: 'restricted',
    },
  ),
  tier: text('N', 'with --restricted: the tier a grant must reach', { default: 0, when: 'restricted' }),
  'manifest-packets': text(
    'N',
    'with --restricted or --signed: sign a manifest over every N DATA packets, 32-64 (with --restricted also 0 for none); default: 64, or fewer (32 at the least) when a DATA datagram is shorter than a manifest of 64 (1,124 bytes): a manifest no longer than the DATA, for a small --packet-size',
  ),
  'group-packets': text(
    'N',
    "with --restricted: every-n-th-packet mode for weak tokens: seal each crypto-period's packets in groups of N (1-1024), each under its own key; a receiver's token is asked once per group and never gives out the traffic key",
  ),
};

/** `gatecast send`. */
export const sendSettings: TObject = settings({
  group: text('ADDR:PORT', 'multicast group to send to, IPv6 as [ff3e::1]:5000'),
  iface: text('NAME|ADDR', 'interface to send on (default: the routing table)'),
  file: text('PATH', 'send a file (its size and SHA-256 go in the descriptor)'),
  stdin: flag('send standard input until it ends'),
  ticker: flag('send a generated stock ticker, one quote per packet'),
  relay: text('ADDR:PORT', 'relay an existing UDP/RTP stream, datagram for datagram'),
  rate: text(
    'BITS',
    'pacing rate in bit/s: 20M, 500k, or unlimited for no pacing (default 10M; relay/ticker: unlimited)',
  ),
  session: text('NAME', 'session name carried in the descriptor (default: the file name)'),
  'packet-size': text('BYTES', `payload bytes per packet, ${packetPayloadBytesMin}-${dataPayloadBytesMax}`, {
    default: packetPayloadBytesDefault,
  }),
  ttl: text('N', 'multicast TTL / hop limit', { default: multicastTtlDefault }),
  'ticks-per-second': text('N', 'ticker quotes per second', { default: 20, when: 'ticker' }),
  ticks: text('N', 'ticker: stop after N quotes'),
  duration: text('SECONDS', 'stop (and send END) after this long'),
  'session-id': text('N', 'fix the 32-bit session id (default random)'),
  json: flag('print the summary as one JSON object instead of a line'),
  'socket-buffer': socketBufferSetting,
  'first-sequence': text('N', 'fix the first sequence number (default random)'),
  subscription: text(
    'URL',
    'register the session with this subscription server first, end it after END; with --restricted, follow the product’s member tree there (a revoked token gets no later key)',
  ),
  'token-file': text('FILE', "with --subscription: the source's bearer token (default: $GATECAST_TOKEN)"),
  'buy-repair': flag(
    'with --subscription: buy repair for the session (retransmit servers are set up, flow B)',
  ),
  'source-address': text('ADDR', 'with --subscription: this sender’s address, for source-specific joins'),
  ...restrictedSend,
  'retransmit-listen': text(
    'ADDR:PORT',
    'keep the session and answer NACKs here as the retransmit server of last resort (needs --secret-file)',
  ),
  'secret-file': text('FILE', "with --retransmit-listen: the operator's shared secret for control messages"),
  'announce-to': text(
    'ADDR:PORT[,...]',
    'with --retransmit-listen: repair (and retransmit) servers to announce to by unicast',
  ),
  'announce-group': text('GROUP:PORT', 'with --retransmit-listen: announce by multicast on this group'),
  'announce-address': text(
    'ADDR',
    'with --retransmit-listen: the address announced for NACKs (default: its address)',
  ),
  'buffer-bytes': text('BYTES', 'with --retransmit-listen: session bytes kept', {
    default: lastResortBufferBytesDefault,
    when: 'retransmit-listen',
  }),
  linger: text('SECONDS', 'with --retransmit-listen: after END, stay while NACKs come, at most this long', {
    default: lastResortLingerMsMaxDefault / 1000,
    when: 'retransmit-listen',
  }),
  'adapt-rate': flag(
    'pace below --rate while repair servers report that the edge does not keep up (FEEDBACK to --retransmit-listen); default for --file with --retransmit-listen',
  ),
  'no-adapt-rate': flag('keep the pacing rate fixed at --rate'),
  'rate-floor': text(
    'BITS',
    `with an adaptive rate: never pace below this (default ${adaptRateFloorFractionDefault * 100} % of --rate)`,
  ),
});

/** `gatecast receive`. */
export const receiveSettings: TObject = settings({
  group: text('ADDR:PORT', 'multicast group to join, IPv6 as [ff3e::1]:5000'),
  iface: text('NAME|ADDR', 'interface to join on (default: the routing table)'),
  source: text('ADDR', 'join source-specific (SSM) to this sender only'),
  out: text('PATH|-', 'where the payload goes (-: standard output)', { short: 'o', default: '-' }),
  json: flag('print the summary as one JSON object (on standard error)'),
  timeout: text('SECONDS', 'give up after this long without a packet', {
    default: receiveTimeoutMsDefault / 1000,
  }),
  ...tokenSettings,
  'source-public': sourcePublicSetting,
  'socket-buffer': socketBufferSetting,
});

/** `gatecast stb`. */
export const stbSettings: TObject = settings({
  server: text('URL', 'the order server, e.g. http://10.0.3.1:8080'),
  token: text('TOKEN', "the box's token (or --token-file FILE, or GATECAST_TOKEN)"),
  'token-file': text('FILE', "a file holding the box's token"),
  service: text('NAME', 'the service to order or cancel'),
  order: text('ID', 'renew or cancel: the order (default: the active order of --service)'),
  once: flag('order: order (or renew) once and exit instead of renewing while running'),
  'renew-every': text('SECONDS', "order: renew this often (default: a third of the order's lease)"),
});

/** `gatecast admin`: where it acts, and the options of its commands. */
export const adminSettings: TObject = settings({
  server: text('URL', 'a running server (gatecast serve), e.g. http://127.0.0.1:8080'),
  'token-file': text('FILE', 'with --server: the bearer token (default: $GATECAST_TOKEN)'),
  db: text('URL', 'the store itself (sqlite:PATH or postgres://…), acting as the operator'),
  'secret-file': text('FILE', 'with --db: control secret for SETUP (sessions that buy repair)'),
  session: text('ID', 'grant, check, usage: the session'),
  from: text('ISO-TIME', 'grant: start of the entitlement'),
  to: text('ISO-TIME', 'grant: end of the entitlement'),
  monthly: text('MINOR', 'grant: the monthly price in minor units'),
  source: text('ADDR', 'session add: the sender, for source-specific joins'),
  price: text(
    'MODEL',
    'session add: free, subscription or pay-as-you-go; orders service: per-order, per-hour or subscription',
  ),
  repair: flag('session add: the session buys repair'),
  owner: text('SOURCE', 'session add: the source party that owns the session'),
  set: text('NAME=MINOR,...', 'rates: set these rates'),
  key: text('KEY', 'usage: the idempotency key (charged once per key)'),
  packets: text('N', 'usage: packets repaired'),
  out: text('FILE', 'export: write the CSV here (default: standard output)'),
  box: text('ID', 'orders: the box'),
  service: text('NAME', 'orders: the service'),
  state: text('STATE', 'orders: active, cancelled, expired, preempted or all (the server answers active)'),
  limit: text('N', 'orders: at most this many'),
  capacity: text('BITS', 'orders link: the capacity of the link'),
  router: text(
    'smcroute:SOCKET:IN:OUT|nftables:IN:OUT[:TABLE]|relay:INADDR:OUTADDR',
    "orders link: the link's router",
  ),
  policy: text('reject|preempt', 'orders link: when the link is full'),
  link: text('LINK', 'orders service: the link the service goes over'),
  group: text('GROUP:PORT', "orders service: the channel's group"),
  rate: text('BITS', 'orders service: its bit rate'),
  priority: text('N', 'orders service: higher wins when a full link pre-empts'),
  'relay-to': text('GROUP:PORT', 'orders service: the group it goes out on over a relay link'),
});

/** The token a `gatecast token` subcommand works on (receive and agent decode with theirs). */
const managedToken = {
  ...tokenSettings,
  token: text('FILE|pkcs11:LABEL', 'the token: a software token file, or a PKCS#11 token label'),
};

/** `gatecast token enroll|topup|receipts`: a token and the subscription server. */
const tokenServer = {
  ...managedToken,
  subscription: text('URL', 'the subscription server'),
  'token-file': text('FILE', "the subscriber's API token (default: $GATECAST_TOKEN)"),
};

/** Each `gatecast token` subcommand. */
export const tokenCommandSettings: Readonly<
  Record<'keys' | 'init' | 'grant' | 'install' | 'enroll' | 'topup' | 'receipts' | 'show', TObject>
> = {
  keys: settings({
    out: text('DIR', 'directory for the new keys (created; existing files are never overwritten)'),
    service: text('NAME', 'also make a service key for this product'),
  }),
  init: settings({
    ...managedToken,
    'root-public': text('FILE', 'the operator root public key (64 hex digits) grants are checked against'),
  }),
  grant: settings({
    'root-key': text('PEM', 'the operator root private key that signs the grant'),
    device: text('FILE', "the token's device public key (from token init, 130 hex digits)"),
    service: text('NAME', 'the product'),
    'service-key-file': text('FILE', 'the service key of this product and epoch'),
    'service-epoch': text('N', 'the service key epoch', { default: 1 }),
    'source-public': text('FILE', 'the source public key whose KEY messages the service trusts'),
    from: text('ISO-TIME', 'start of the window (default now)'),
    until: text('ISO-TIME', 'end of the window (exclusive)'),
    tier: text('N', 'tier granted', { default: 0 }),
    'price-per-period': text(
      'MINOR',
      'pay-as-you-go: minor units debited from the purse per crypto-period (default: a subscription)',
    ),
    currency: text('ISO-4217', 'currency of the rate card', { default: 'EUR' }),
    out: text('FILE', 'where the grant goes'),
  }),
  install: settings({
    ...managedToken,
    grant: text('FILE', 'a grant issued by gatecast token grant'),
  }),
  enroll: settings({
    ...tokenServer,
    subscriber: text('ID', 'with the operator token: the subscriber to enroll for'),
  }),
  topup: settings({
    ...tokenServer,
    amount: text('MINOR', 'minor units to move from the subscriber to the purse'),
  }),
  receipts: settings({
    ...tokenServer,
    resend: flag('also send again the receipts billing took before (charged once however often sent)'),
  }),
  show: settings({
    ...managedToken,
    json: flag('print JSON'),
  }),
};
