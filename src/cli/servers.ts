/** `gatecast retransmit`, `gatecast repair` and `gatecast agent`: the repair service's commands. */

import { mkdirSync } from 'node:fs';
import { dirname, join, resolve as resolvePath } from 'node:path';
import {
  announceIntervalMsDefault,
  controllerIdleMs,
  controllerLeaseMsDefault,
  controllerPoolSizeDefault,
  controllerReportIntervalMsDefault,
  repairRateBitsPerSecondDefault,
  retransmitBufferAgeMsDefault,
  retransmitBufferBytesDefault,
} from '../limits.js';
import { formatEndpoint, parseEndpoint } from '../net/address.js';
import { readTlsFiles } from '../net/tls.js';
import { type AgentMapping, startAgent, startWatchingAgent } from '../receiver/agent.js';
import { type ControllerClient, controllerClient } from '../receiver/controller-client.js';
import { startRepairServer } from '../repair/repair.js';
import { startRetransmitServer } from '../retransmit/retransmit.js';
import { daemonOptions, keysFrom, parseEndpointList, runDaemon } from './daemon.js';
import { exitOk, UsageError } from './errors.js';
import {
  formatHelp,
  type GroupContext,
  groupOption,
  ifaceOption,
  type OptionSpecs,
  type OptionValues,
  optional,
  parseGroupOn,
  parseInteger,
  parseOptions,
  parseRate,
  parseSeconds,
  parseServerUrl,
  required,
} from './options.js';
import { sourcePublicKeyOption, sourcePublicOptions } from './restricted.js';
import { agentSample, controllerSample, repairSampler, retransmitSample } from './role-metrics.js';
import { applySocketBuffer } from './socket-buffer.js';
import { readToken } from './token.js';

const retransmitOptions: OptionSpecs = {
  ...sourcePublicOptions,
  join: { type: 'string', value: 'GROUP:PORT[,...]', help: 'sessions to buffer (more may come by SETUP)' },
  source: { type: 'string', value: 'ADDR', help: 'join source-specific (SSM) to this sender' },
  iface: { type: 'string', value: 'NAME|ADDR', help: 'interface to join on' },
  listen: { type: 'string', value: 'ADDR:PORT', help: 'where NACKs, SETUP and QUALITY arrive' },
  'announce-to': {
    type: 'string',
    value: 'ADDR:PORT[,...]',
    help: 'repair servers to announce to by unicast',
  },
  'announce-group': { type: 'string', value: 'GROUP:PORT', help: 'announce by multicast on this group' },
  'announce-address': {
    type: 'string',
    value: 'ADDR',
    help: 'address to announce for NACKs (default: --listen)',
  },
  peer: {
    type: 'string',
    value: 'ADDR:PORT[,...]',
    help: 'other retransmit servers: QUALITY reports and election',
  },
  'repair-group': {
    type: 'string',
    value: 'GROUP:PORT',
    help: 'answer once by multicast here, for all repair servers',
  },
  'buffer-bytes': {
    type: 'string',
    value: 'BYTES',
    help: `ring buffer per session (default ${retransmitBufferBytesDefault})`,
  },
  'buffer-age': {
    type: 'string',
    value: 'SECONDS',
    help: `oldest packet kept (default ${retransmitBufferAgeMsDefault / 1000})`,
  },
  'repair-rate': { type: 'string', value: 'BITS', help: 'repair rate per repair server (default 200M)' },
  'election-loss': {
    type: 'string',
    value: 'PERCENT',
    help: 'withdraw above this own loss if another listens (default 5)',
  },
  'election-best': { type: 'string', value: 'N', help: 'listen only when among the best N (default 2)' },
  period: { type: 'string', value: 'SECONDS', help: 'announce and quality period (default 1)' },
  ...daemonOptions,
};

const repairOptions: OptionSpecs = {
  ...sourcePublicOptions,
  join: { type: 'string', value: 'GROUP:PORT', help: 'the session S1 to repair' },
  source: { type: 'string', value: 'ADDR', help: 'join S1 source-specific (SSM)' },
  iface: { type: 'string', value: 'NAME|ADDR', help: 'interface to join S1 on (and emit on)' },
  listen: { type: 'string', value: 'ADDR:PORT', help: 'where REPAIR and ANNOUNCE arrive' },
  retransmit: {
    type: 'string',
    value: 'ADDR:PORT[,...]',
    help: 'retransmit servers to ask, in preference order',
  },
  'announce-group': {
    type: 'string',
    value: 'GROUP:PORT',
    help: 'learn retransmit servers from announcements here',
  },
  'repair-group': {
    type: 'string',
    value: 'GROUP:PORT',
    help: 'receive repairs multicast by retransmit servers here',
  },
  emit: { type: 'string', value: 'GROUP:PORT', help: 'the repaired group S2' },
  'emit-iface': { type: 'string', value: 'NAME|ADDR', help: 'interface to emit S2 on (default --iface)' },
  ttl: { type: 'string', value: 'N', help: 'TTL / hop limit of S2 (default 16)' },
  reliable: { type: 'boolean', help: 'wait for every packet as long as the retransmit buffers hold (files)' },
  controller: {
    type: 'string',
    value: 'ADDR:PORT',
    help: 'run the controller here (flow A): repair whatever entitled agents ask for, instead of --join',
  },
  subscription: {
    type: 'string',
    value: 'URL',
    help: 'with --controller: the subscription server, e.g. http://10.0.0.5:8080',
  },
  'token-file': {
    type: 'string',
    value: 'FILE',
    help: "with --controller: the operator's token for it (default: $GATECAST_TOKEN)",
  },
  's2-pool': {
    type: 'string',
    value: 'GROUP:PORT[/N]',
    help: 'with --controller: hand out S2 from N groups starting here (default N 256)',
  },
  lease: { type: 'string', value: 'SECONDS', help: 'with --controller: grant lease (default 60)' },
  journal: {
    type: 'string',
    value: 'FILE',
    help: 'with --controller: usage reports kept here until taken (default ./data/repair-controller-PORT.journal)',
  },
  'tls-cert': {
    type: 'string',
    value: 'FILE',
    help: 'with --controller: serve agents over HTTPS, PEM certificate chain (with --tls-key)',
  },
  'tls-key': { type: 'string', value: 'FILE', help: 'with --controller: PEM private key of --tls-cert' },
  'report-interval': {
    type: 'string',
    value: 'SECONDS',
    help: 'with --controller: report repaired bytes as usage this often (default 60)',
  },
  latency: { type: 'string', value: 'MS', help: 'live streams: give a packet up after this budget' },
  ...daemonOptions,
};

const agentOptions: OptionSpecs = {
  watch: {
    type: 'boolean',
    help: "follow the host's group memberships: deliver a mapped S1 while an application holds it",
  },
  map: {
    type: 'string',
    value: 'S1=S2[,...]',
    help: 'with --watch: GROUP:PORT=GROUP:PORT pairs of sessions and their repaired groups',
  },
  controller: {
    type: 'string',
    value: 'URL',
    help: 'with --watch: ask this repair controller for S2 (flow A), e.g. http://10.0.0.9:8090',
  },
  sessions: {
    type: 'string',
    value: 'GROUP:PORT[,...]',
    help: 'with --controller: the sessions S1 to have repaired when an application joins them',
  },
  'token-file': {
    type: 'string',
    value: 'FILE',
    help: "with --controller: the subscriber's bearer token (default: $GATECAST_TOKEN)",
  },
  from: { type: 'string', value: 'GROUP:PORT', help: 'the repaired group S2 to join' },
  'from-iface': { type: 'string', value: 'NAME|ADDR', help: 'interface to join S2 on' },
  deliver: {
    type: 'string',
    value: 'GROUP:PORT',
    help: "S1's group and port, where the application listens",
  },
  'deliver-iface': { type: 'string', value: 'NAME|ADDR', help: 'interface the application joined S1 on' },
  ...daemonOptions,
};

/** Parses an optional group option, checked with the interface it is used on. */
function optionalGroup(text: string | undefined, field: string, on: GroupContext) {
  return text === undefined ? undefined : parseGroupOn(text, field, on);
}

/**
 * What a repair server and each of the controller's repair modules are built from: everything but
 * S1, S2 and their control socket.
 */
function repairModuleOptions(values: OptionValues) {
  const latencyText = optional(values, 'latency');
  if ((values.reliable === true) === (latencyText !== undefined)) {
    throw new UsageError('choose one of --reliable (files) or --latency MS (live streams)');
  }
  const ttlText = optional(values, 'ttl');
  return {
    iface: optional(values, 'iface'),
    keys: keysFrom(values),
    retransmit: parseEndpointList(optional(values, 'retransmit'), '--retransmit'),
    announceGroup: optionalGroup(
      optional(values, 'announce-group'),
      '--announce-group',
      ifaceOption(values, 'iface'),
    ),
    repairGroup: optionalGroup(
      optional(values, 'repair-group'),
      '--repair-group',
      ifaceOption(values, 'iface'),
    ),
    emitIface: optional(values, 'emit-iface'),
    ttl: ttlText === undefined ? undefined : parseInteger(ttlText, '--ttl', 1, 255),
    latencyMs: latencyText === undefined ? undefined : parseInteger(latencyText, '--latency', 1, 600_000),
  };
}

/** Runs `gatecast retransmit`. */
export async function runRetransmit(argv: string[], err: NodeJS.WriteStream): Promise<number> {
  const values = parseOptions(argv, retransmitOptions);
  if (values.help === true) {
    process.stdout.write(
      formatHelp(
        'gatecast retransmit --join GROUP:PORT --listen ADDR:PORT --secret-file FILE [options]',
        'Buffer sessions inside the network and answer repair servers’ NACKs.',
        retransmitOptions,
      ),
    );
    return exitOk;
  }
  applySocketBuffer(values);
  const joins = (optional(values, 'join') ?? '')
    .split(',')
    .filter((part) => part.trim() !== '')
    .map((part) => ({
      group: parseGroupOn(part.trim(), '--join', {
        ...ifaceOption(values, 'iface'),
        source: optional(values, 'source'),
      }),
      source: optional(values, 'source'),
    }));
  const iface = optional(values, 'iface');
  const listen = parseEndpoint(required(values, 'listen'), '--listen');
  const keys = keysFrom(values);
  const peers = parseEndpointList(optional(values, 'peer'), '--peer');
  const announceGroupText = optional(values, 'announce-group');
  const periodText = optional(values, 'period');
  const periodMs =
    periodText === undefined ? announceIntervalMsDefault : parseSeconds(periodText, '--period');
  const bufferBytesText = optional(values, 'buffer-bytes');
  const bufferAgeText = optional(values, 'buffer-age');
  const server = await startRetransmitServer({
    sourcePublicKey: sourcePublicKeyOption(values),
    joins,
    iface,
    listen,
    announceAddress: optional(values, 'announce-address'),
    keys,
    bufferBytesMax:
      bufferBytesText === undefined
        ? retransmitBufferBytesDefault
        : parseInteger(bufferBytesText, '--buffer-bytes', 65_536, 2 ** 40),
    bufferAgeMs:
      bufferAgeText === undefined
        ? retransmitBufferAgeMsDefault
        : parseSeconds(bufferAgeText, '--buffer-age'),
    repairRateBitsPerSecond: parseRate(
      optional(values, 'repair-rate') ?? `${repairRateBitsPerSecondDefault}`,
      '--repair-rate',
    ),
    announceTo: parseEndpointList(optional(values, 'announce-to'), '--announce-to'),
    announceGroup: optionalGroup(announceGroupText, '--announce-group', ifaceOption(values, 'iface')),
    peers,
    repairGroup: optionalGroup(
      optional(values, 'repair-group'),
      '--repair-group',
      ifaceOption(values, 'iface'),
    ),
    election:
      peers.length === 0
        ? undefined
        : {
            lossMax: parseInteger(optional(values, 'election-loss') ?? '5', '--election-loss', 0, 100) / 100,
            bestCount: parseInteger(optional(values, 'election-best') ?? '2', '--election-best', 1, 64),
            periodMs,
          },
  });
  err.write(`retransmit: listening on ${formatEndpoint(server.local)}, ${joins.length} session(s) joined\n`);
  return runDaemon(
    server,
    values,
    err,
    () => {
      const s = server.status();
      const sessions = s.sessions
        .map(
          (x) =>
            `${x.group} ${x.state} held ${x.heldPackets} loss ${x.lossPercent.toFixed(2)}% missed ${x.missingPackets} fetched ${x.fetchedPackets}`,
        )
        .join('; ');
      return `retransmit: in ${s.packetsIn} nacks ${s.nacksReceived} repairs ${s.repairsSent} not-held ${s.notHeldSent} rate-limited ${s.rateLimited} | ${sessions}`;
    },
    { command: 'retransmit', sampler: () => retransmitSample(server.status()) },
  );
}

/** Runs `gatecast repair`. */
export async function runRepair(argv: string[], err: NodeJS.WriteStream): Promise<number> {
  const values = parseOptions(argv, repairOptions);
  if (values.help === true) {
    process.stdout.write(
      formatHelp(
        'gatecast repair --join GROUP:PORT --listen ADDR:PORT --secret-file FILE --emit GROUP:PORT (--reliable | --latency MS) [options]',
        'Repair a session near its receivers and re-emit it whole, in order, on a new group.',
        repairOptions,
      ),
    );
    return exitOk;
  }
  applySocketBuffer(values);
  if (optional(values, 'controller') !== undefined) {
    return runController(values, err);
  }
  const group = groupOption(values, 'join', 'iface', 'source');
  const emit = parseGroupOn(required(values, 'emit'), '--emit', ifaceOption(values, 'emit-iface', 'iface'));
  const server = await startRepairServer({
    ...repairModuleOptions(values),
    sourcePublicKey: sourcePublicKeyOption(values),
    group,
    source: optional(values, 'source'),
    listen: parseEndpoint(required(values, 'listen'), '--listen'),
    emit,
  });
  err.write(
    `repair: ${formatEndpoint(group)} -> ${formatEndpoint(emit)}, listening on ${formatEndpoint(server.local)}\n`,
  );
  return runDaemon(
    server,
    values,
    err,
    () => {
      const s = server.status();
      return `repair: in ${s.packetsIn} gaps ${s.gaps} nacks ${s.nacksSent} repairs ${s.repairsReceived} recovered ${s.recovered} unrecoverable ${s.unrecoverable} timeouts ${s.timeouts} emitted ${s.emitted} holding ${s.holding}`;
    },
    { command: 'repair', sampler: repairSampler(server) },
  );
}

/** `gatecast repair --controller ADDR:PORT`: flow A's repair controller. */
async function runController(values: OptionValues, err: NodeJS.WriteStream): Promise<number> {
  for (const name of ['join', 'emit', 'source']) {
    if (optional(values, name) !== undefined) {
      throw new UsageError(`--${name}: not with --controller (S1 comes from the agents, S2 from --s2-pool)`);
    }
  }
  const listen = parseEndpoint(required(values, 'controller'), '--controller');
  const subscription = parseServerUrl(required(values, 'subscription'), '--subscription');
  const poolText = required(values, 's2-pool');
  const [poolGroup = '', poolCount] = poolText.split('/');
  const pool = parseGroupOn(poolGroup, '--s2-pool', ifaceOption(values, 'emit-iface', 'iface'));
  const poolSize =
    poolCount === undefined ? controllerPoolSizeDefault : parseInteger(poolCount, '--s2-pool', 1, 65_536);
  const leaseText = optional(values, 'lease');
  const reportText = optional(values, 'report-interval');
  if (leaseText !== undefined && parseSeconds(leaseText, '--lease') < 1000) {
    throw new UsageError(`--lease: ${leaseText} is shorter than 1 second`);
  }
  if (reportText !== undefined && parseSeconds(reportText, '--report-interval') < 100) {
    throw new UsageError(`--report-interval: ${reportText} is shorter than 0.1 second`);
  }
  const module = repairModuleOptions(values);
  const tls = readTlsFiles(optional(values, 'tls-cert'), optional(values, 'tls-key'));
  const journal = optional(values, 'journal') ?? join('data', `repair-controller-${listen.port}.journal`);
  try {
    mkdirSync(dirname(resolvePath(journal)), { recursive: true });
  } catch (error) {
    throw new UsageError(
      `--journal: cannot create the folder of ${journal}: ${(error as NodeJS.ErrnoException).code}`,
    );
  }
  // Imported here, not at the top: the controller brings Fastify, which plain repair and
  // retransmit servers do not need at start-up.
  const { startRepairController } = await import('../repair/controller.js');
  const controller = await startRepairController({
    listen,
    tls,
    journal,
    subscription,
    token: readToken(optional(values, 'token-file')),
    pool,
    poolSize,
    leaseMs: leaseText === undefined ? controllerLeaseMsDefault : parseSeconds(leaseText, '--lease'),
    reportIntervalMs:
      reportText === undefined
        ? controllerReportIntervalMsDefault
        : parseSeconds(reportText, '--report-interval'),
    idleMs: controllerIdleMs,
    module: { ...module, listen: parseEndpoint(required(values, 'listen'), '--listen') },
  });
  err.write(
    `repair: controller on ${controller.url}, S2 from ${formatEndpoint(pool)} (${poolSize} groups)\n`,
  );
  return runDaemon(
    controller,
    values,
    err,
    () => {
      const s = controller.status();
      return `repair: controller grants ${s.grants} refusals ${s.refusals} modules ${s.modules.length} usage reported ${s.usageBytesReported} bytes (${s.reportsPending} pending)`;
    },
    { command: 'repair', sampler: () => controllerSample(controller.status()) },
  );
}

/** Runs `gatecast agent`. */
export async function runAgent(argv: string[], err: NodeJS.WriteStream): Promise<number> {
  const values = parseOptions(argv, agentOptions);
  if (values.help === true) {
    process.stdout.write(
      formatHelp(
        'gatecast agent --from GROUP:PORT --deliver GROUP:PORT [--deliver-iface IF] [options]',
        "Hand the repaired session S2 to the host's application as if it came on S1.",
        agentOptions,
      ),
    );
    return exitOk;
  }
  applySocketBuffer(values);
  if (values.watch === true) {
    return runWatchingAgent(values, err);
  }
  const from = groupOption(values, 'from', 'from-iface');
  const deliver = groupOption(values, 'deliver', 'deliver-iface');
  const agent = await startAgent({
    from,
    fromIface: optional(values, 'from-iface'),
    deliver,
    deliverIface: optional(values, 'deliver-iface'),
  });
  err.write(`agent: ${formatEndpoint(from)} -> ${formatEndpoint(deliver)} (local delivery)\n`);
  return runDaemon(
    agent,
    values,
    err,
    () => {
      const s = agent.status();
      return `agent: delivered ${s.delivered} (${s.deliveredBytes} bytes) duplicates ${s.duplicates} gaps ${s.gapsSeen}`;
    },
    { command: 'agent', sampler: () => agentSample(agent.status()) },
  );
}

/** `gatecast agent --watch (--map S1=S2,... | --controller URL --sessions S1,...)`. */
async function runWatchingAgent(values: OptionValues, err: NodeJS.WriteStream): Promise<number> {
  const mapText = optional(values, 'map');
  const controllerUrl = optional(values, 'controller');
  if ((mapText === undefined) === (controllerUrl === undefined)) {
    throw new UsageError('--watch needs one of --map S1=S2,... or --controller URL --sessions S1,...');
  }
  let mappings: AgentMapping[];
  let controller: ControllerClient | undefined;
  if (mapText !== undefined) {
    mappings = mapText
      .split(',')
      .filter((part) => part.trim() !== '')
      .map((part) => {
        const [s1, s2, extra] = part.split('=');
        if (s1 === undefined || s2 === undefined || extra !== undefined) {
          throw new UsageError(`--map: "${part}" is not S1GROUP:PORT=S2GROUP:PORT`);
        }
        return {
          s1: parseGroupOn(s1.trim(), '--map', {
            ...ifaceOption(values, 'deliver-iface'),
            ifaceLearned: true,
          }),
          s2: parseGroupOn(s2.trim(), '--map', ifaceOption(values, 'from-iface')),
        };
      });
  } else {
    mappings = required(values, 'sessions')
      .split(',')
      .filter((part) => part.trim() !== '')
      .map((part) => ({
        s1: parseGroupOn(part.trim(), '--sessions', {
          ...ifaceOption(values, 'deliver-iface'),
          ifaceLearned: true,
        }),
      }));
    const url = parseServerUrl(String(controllerUrl), '--controller');
    controller = controllerClient(url, readToken(optional(values, 'token-file')));
  }
  const agent = await startWatchingAgent({
    mappings,
    controller,
    fromIface: optional(values, 'from-iface'),
    deliverIface: optional(values, 'deliver-iface'),
    onChange: (mapping, active, iface, s2) =>
      err.write(
        active
          ? `agent: ${formatEndpoint(mapping.s1)} joined on ${iface}: delivering ${formatEndpoint(s2)} -> ${formatEndpoint(mapping.s1)}\n`
          : `agent: ${formatEndpoint(mapping.s1)} left on ${iface}: delivery stopped\n`,
      ),
    onRefused: (mapping, reason) =>
      err.write(
        `agent: repair of ${formatEndpoint(mapping.s1)} refused: ${reason}; the application keeps the plain S1\n`,
      ),
  });
  err.write(`agent: watching group memberships for ${mappings.length} session(s)\n`);
  return runDaemon(
    agent,
    values,
    err,
    () => {
      const s = agent.status();
      return `agent: ${s.sessions.map((x) => `${x.s1} ${x.active ? `delivering (${x.delivery?.delivered ?? 0})` : x.refused === undefined ? 'idle' : 'refused'}`).join('; ')}`;
    },
    { command: 'agent', sampler: () => agentSample(agent.status()) },
  );
}
