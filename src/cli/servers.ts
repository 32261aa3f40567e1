/** `gatecast retransmit`, `gatecast repair` and `gatecast agent`: the repair service's commands. */

import { mkdirSync } from 'node:fs';
import { dirname, join, resolve as resolvePath } from 'node:path';
import type { TObject } from '@sinclair/typebox';
import { readS2KeyFile } from '../crypto/s2-seal.js';
import { controllerIdleMs, controllerPoolSizeDefault } from '../limits.js';
import { canonicalAddress, formatEndpoint } from '../net/address.js';
import { InvalidArgumentError } from '../net/errors.js';
import { readTlsFiles } from '../net/tls.js';
import {
  type AgentMapping,
  type AgentProtection,
  type AgentStatus,
  startAgent,
  startWatchingAgent,
} from '../receiver/agent.js';
import { type ControllerClient, controllerClient } from '../receiver/controller-client.js';
import { startRepairServer } from '../repair/repair.js';
import { startRetransmitServer } from '../retransmit/retransmit.js';
import { parseUnicastEndpoint } from './control-keys.js';
import { keysFrom, parseEndpointList, type RoleStarter, runDaemon, runningRole } from './daemon.js';
import { exitOk, UsageError } from './errors.js';
import {
  formatHelp,
  type GroupContext,
  groupOption,
  ifaceOption,
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
import {
  describeAeadEngine,
  describeSignatureEngine,
  sourcePublicKeyOption,
  tokenOpener,
} from './restricted.js';
import { agentSample, controllerSample, repairSampler, retransmitSample } from './role-metrics.js';
import { agentSettings, repairSettings, retransmitSettings } from './role-settings.js';
import { applySocketBuffer } from './socket-buffer.js';
import { readToken } from './token.js';

/** The S2 key of --s2-key-file, or undefined (S2 plain); a usage error names the option. */
function s2KeyOption(values: OptionValues) {
  const path = optional(values, 's2-key-file');
  if (path === undefined) {
    return undefined;
  }
  try {
    return readS2KeyFile(path, '--s2-key-file');
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

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

/**
 * Runs a server command: parses its options (or prints its help for --help), sizes the socket
 * buffers, checks its settings with `prepare`, then runs the role until it is told to stop.
 */
async function runServerCommand(
  argv: string[],
  err: NodeJS.WriteStream,
  command: {
    settings: TObject;
    usage: string;
    summary: string;
    prepare: (values: OptionValues) => RoleStarter;
  },
): Promise<number> {
  const values = parseOptions(argv, command.settings);
  if (values.help === true) {
    process.stdout.write(formatHelp(command.usage, command.summary, command.settings));
    return exitOk;
  }
  applySocketBuffer(values);
  return runDaemon(await command.prepare(values)(err), values, err);
}

/** Runs `gatecast retransmit`. */
export function runRetransmit(argv: string[], err: NodeJS.WriteStream): Promise<number> {
  return runServerCommand(argv, err, {
    settings: retransmitSettings,
    usage: 'gatecast retransmit --join GROUP:PORT --listen ADDR:PORT --secret-file FILE [options]',
    summary: 'Buffer sessions inside the network and answer repair servers’ NACKs.',
    prepare: prepareRetransmit,
  });
}

/** Checks a retransmit server's settings; the starter it returns opens its sockets. */
export function prepareRetransmit(values: OptionValues): RoleStarter {
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
  // One group given twice would be joined twice: every packet buffered twice, announced twice,
  // and a SETUP leave would leave only one of the two.
  const joinedKeys = new Set<string>();
  for (const { group } of joins) {
    const key = formatEndpoint({ ...group, address: canonicalAddress(group.address) });
    if (joinedKeys.has(key)) {
      throw new UsageError(`--join: ${formatEndpoint(group)} is given twice`);
    }
    joinedKeys.add(key);
  }
  const iface = optional(values, 'iface');
  const listen = parseUnicastEndpoint(required(values, 'listen'), '--listen');
  const peers = parseEndpointList(optional(values, 'peer'), '--peer');
  const announceGroupText = optional(values, 'announce-group');
  const periodMs = parseSeconds(required(values, 'period'), '--period', 10);
  const bufferAgeMs = parseSeconds(required(values, 'buffer-age'), '--buffer-age', 100);
  // Checked with or without --peer: a value that is wrong is wrong whether or not it is used yet.
  const electionLossMax = parseInteger(required(values, 'election-loss'), '--election-loss', 0, 100) / 100;
  const electionBest = parseInteger(required(values, 'election-best'), '--election-best', 1, 64);
  // The secret file is read after the values are checked, so a wrong value is named first.
  const keys = keysFrom(values);
  const settings = {
    sourcePublicKey: sourcePublicKeyOption(values),
    joins,
    iface,
    listen,
    announceAddress: optional(values, 'announce-address'),
    keys,
    bufferBytesMax: parseInteger(required(values, 'buffer-bytes'), '--buffer-bytes', 65_536, 2 ** 40),
    bufferAgeMs,
    repairRateBitsPerSecond: parseRate(required(values, 'repair-rate'), '--repair-rate'),
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
            lossMax: electionLossMax,
            bestCount: electionBest,
            periodMs,
          },
  };
  return async (err) => {
    const server = await startRetransmitServer(settings);
    err.write(
      `retransmit: listening on ${formatEndpoint(server.local)}, ${joins.length} session(s) joined\n${settings.sourcePublicKey === undefined ? '' : `retransmit: ${describeSignatureEngine()}\n`}`,
    );
    return runningRole(
      'retransmit',
      server,
      () => retransmitSample(server.status()),
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
    );
  };
}

/** Runs `gatecast repair`. */
export function runRepair(argv: string[], err: NodeJS.WriteStream): Promise<number> {
  return runServerCommand(argv, err, {
    settings: repairSettings,
    usage:
      'gatecast repair --join GROUP:PORT --listen ADDR:PORT --secret-file FILE --emit GROUP:PORT (--reliable | --latency MS) [options]',
    summary: 'Repair a session near its receivers and re-emit it whole, in order, on a new group.',
    prepare: prepareRepair,
  });
}

/** Checks a repair server's (or the repair controller's) settings; the starter opens its sockets. */
export function prepareRepair(values: OptionValues): RoleStarter {
  if (optional(values, 'controller') !== undefined) {
    return prepareController(values);
  }
  const group = groupOption(values, 'join', 'iface', 'source');
  const emitOn = ifaceOption(values, 'emit-iface', 'iface');
  const emit = parseGroupOn(required(values, 'emit'), '--emit', emitOn);
  if (
    canonicalAddress(emit.address) === canonicalAddress(group.address) &&
    emit.port === group.port &&
    emitOn.iface === optional(values, 'iface')
  ) {
    // On the link it joins, S2 would loop back into S1: every packet heard again as a duplicate.
    throw new InvalidArgumentError(
      '--emit',
      `${formatEndpoint(emit)} is the group it joins (--join) on the same link: give S2 another group or port, or another link with --emit-iface`,
    );
  }
  const s2Key = s2KeyOption(values);
  const settings = {
    ...repairModuleOptions(values),
    sourcePublicKey: sourcePublicKeyOption(values),
    group,
    source: optional(values, 'source'),
    listen: parseUnicastEndpoint(required(values, 'listen'), '--listen'),
    emit,
    s2Key,
  };
  return async (err) => {
    const server = await startRepairServer(settings);
    err.write(
      `repair: ${formatEndpoint(group)} -> ${formatEndpoint(emit)} (${s2Key === undefined ? 'plain' : `sealed, key epoch ${s2Key.epoch}`}), listening on ${formatEndpoint(server.local)}\n${s2Key === undefined ? (settings.sourcePublicKey === undefined ? '' : `repair: ${describeSignatureEngine()}\n`) : `repair: ${describeAeadEngine()}\n`}`,
    );
    return runningRole('repair', server, repairSampler(server), () => {
      const s = server.status();
      return `repair: in ${s.packetsIn} gaps ${s.gaps} nacks ${s.nacksSent} repairs ${s.repairsReceived} recovered ${s.recovered} unrecoverable ${s.unrecoverable} timeouts ${s.timeouts} emitted ${s.emitted} holding ${s.holding}`;
    });
  };
}

/** `gatecast repair --controller ADDR:PORT`: flow A's repair controller. */
function prepareController(values: OptionValues): RoleStarter {
  for (const name of ['join', 'emit', 'source']) {
    if (optional(values, name) !== undefined) {
      throw new UsageError(`--${name}: not with --controller (S1 comes from the agents, S2 from --s2-pool)`);
    }
  }
  if (optional(values, 's2-key-file') !== undefined) {
    throw new UsageError('--s2-key-file: not with --controller (it makes and rotates every S2 key itself)');
  }
  const listen = parseUnicastEndpoint(required(values, 'controller'), '--controller');
  const subscription = parseServerUrl(required(values, 'subscription'), '--subscription');
  const poolText = required(values, 's2-pool');
  const [poolGroup = '', poolCount] = poolText.split('/');
  const pool = parseGroupOn(poolGroup, '--s2-pool', ifaceOption(values, 'emit-iface', 'iface'));
  const poolSize =
    poolCount === undefined ? controllerPoolSizeDefault : parseInteger(poolCount, '--s2-pool', 1, 65_536);
  const leaseText = required(values, 'lease');
  const reportText = required(values, 'report-interval');
  if (parseSeconds(leaseText, '--lease') < 1000) {
    throw new UsageError(`--lease: ${leaseText} is shorter than 1 second`);
  }
  if (parseSeconds(reportText, '--report-interval') < 100) {
    throw new UsageError(`--report-interval: ${reportText} is shorter than 0.1 second`);
  }
  const module = repairModuleOptions(values);
  const moduleListen = parseUnicastEndpoint(required(values, 'listen'), '--listen');
  // Module i of the pool listens on --listen's port + i: the last one must be a port too.
  if (moduleListen.port !== 0 && moduleListen.port + poolSize - 1 > 65_535) {
    throw new UsageError(
      `--listen: port ${moduleListen.port} leaves no room for ${poolSize} S2 modules of --s2-pool (one port each, up to ${moduleListen.port + poolSize - 1}); use a port up to ${65_536 - poolSize}, or 0`,
    );
  }
  const tls = readTlsFiles(optional(values, 'tls-cert'), optional(values, 'tls-key'));
  const journal = optional(values, 'journal') ?? join('data', `repair-controller-${listen.port}.journal`);
  const settings = {
    listen,
    tls,
    journal,
    subscription,
    token: readToken(optional(values, 'token-file')),
    pool,
    poolSize,
    leaseMs: parseSeconds(leaseText, '--lease'),
    reportIntervalMs: parseSeconds(reportText, '--report-interval'),
    idleMs: controllerIdleMs,
    module: { ...module, listen: moduleListen },
  };
  return async (err) => {
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
    const controller = await startRepairController(settings);
    err.write(
      `repair: controller on ${controller.url}, S2 from ${formatEndpoint(pool)} (${poolSize} groups)\n`,
    );
    return runningRole(
      'repair',
      controller,
      () => controllerSample(controller.status()),
      () => {
        const s = controller.status();
        return `repair: controller grants ${s.grants} refusals ${s.refusals} modules ${s.modules.length} usage reported ${s.usageBytesReported} bytes (${s.reportsPending} pending, ${s.reportsRefused} refused)`;
      },
    );
  };
}

/** Runs `gatecast agent`. */
export function runAgent(argv: string[], err: NodeJS.WriteStream): Promise<number> {
  return runServerCommand(argv, err, {
    settings: agentSettings,
    usage: 'gatecast agent --from GROUP:PORT --deliver GROUP:PORT [--deliver-iface IF] [options]',
    summary: "Hand the repaired session S2 to the host's application as if it came on S1.",
    prepare: prepareAgent,
  });
}

/**
 * The agent's --token, --pkcs11-module, --pin-file and --source-public, checked now (as `receive`
 * checks them); `open` opens and prepares the token when the agent starts, `close` closes it.
 */
function agentProtectionOption(values: OptionValues) {
  const openToken = tokenOpener(values);
  const sourcePublicKey = sourcePublicKeyOption(values);
  let token: ReturnType<NonNullable<typeof openToken>> | undefined;
  return {
    tokenGiven: openToken !== undefined,
    signed: sourcePublicKey !== undefined,
    open(err: NodeJS.WritableStream): AgentProtection {
      token = openToken?.();
      return {
        token,
        sourcePublicKey,
        onRestricted: (event) =>
          err.write(
            `agent: restricted session ${event.session}: ${event.kind === 'no-token' ? 'no --token' : event.refusal.message}; nothing delivered\n`,
          ),
      };
    },
    close() {
      token?.close();
    },
  };
}

/** Closes the role, then the token it decoded with. */
function withToken<T extends { close(): Promise<void> }>(role: T, close: () => void): T {
  return {
    ...role,
    close: async () => {
      try {
        await role.close();
      } finally {
        close();
      }
    },
  };
}

/** What a delivery's status line says of restricted sessions. */
function restrictedLine(s: AgentStatus, tokenGiven: boolean): string {
  return tokenGiven || s.restrictedDropped > 0
    ? ` decrypted ${s.decrypted} refused ${s.refused} restricted-dropped ${s.restrictedDropped}`
    : '';
}

/** Checks an agent's settings; the starter it returns opens its sockets. */
export function prepareAgent(values: OptionValues): RoleStarter {
  if (values.watch === true) {
    return prepareWatchingAgent(values);
  }
  const from = groupOption(values, 'from', 'from-iface');
  const deliver = groupOption(values, 'deliver', 'deliver-iface');
  const s2Key = s2KeyOption(values);
  const protection = agentProtectionOption(values);
  return async (err) => {
    let agent: Awaited<ReturnType<typeof startAgent>>;
    try {
      agent = await startAgent({
        from,
        fromIface: optional(values, 'from-iface'),
        deliver,
        deliverIface: optional(values, 'deliver-iface'),
        s2Key,
        protection: protection.open(err),
      });
    } catch (error) {
      protection.close();
      throw error;
    }
    err.write(
      `agent: ${formatEndpoint(from)} -> ${formatEndpoint(deliver)} (local delivery${s2Key === undefined ? '' : `, S2 sealed, key epoch ${s2Key.epoch}`}${protection.tokenGiven ? ', restricted sessions decrypted with --token' : ''})\n${s2Key !== undefined || protection.tokenGiven ? `agent: ${describeAeadEngine()}\n` : protection.signed ? `agent: ${describeSignatureEngine()}\n` : ''}`,
    );
    return runningRole(
      'agent',
      withToken(agent, () => protection.close()),
      () => agentSample(agent.status()),
      () => {
        const s = agent.status();
        const sealed = s.sealed ? ` opened ${s.opened} bad-tag ${s.badTag} unsealed ${s.unsealed}` : '';
        return `agent: delivered ${s.delivered} (${s.deliveredBytes} bytes) duplicates ${s.duplicates} gaps ${s.gapsSeen}${sealed}${restrictedLine(s, protection.tokenGiven)}`;
      },
    );
  };
}

/** `gatecast agent --watch (--map S1=S2,... | --controller URL --sessions S1,...)`. */
function prepareWatchingAgent(values: OptionValues): RoleStarter {
  const mapText = optional(values, 'map');
  const controllerUrl = optional(values, 'controller');
  if ((mapText === undefined) === (controllerUrl === undefined)) {
    throw new UsageError('--watch needs one of --map S1=S2,... or --controller URL --sessions S1,...');
  }
  let mappings: AgentMapping[];
  let controller: ControllerClient | undefined;
  const s2Key = s2KeyOption(values);
  if (s2Key !== undefined && mapText === undefined) {
    throw new UsageError('--s2-key-file: with --map only (the controller’s grant carries the key)');
  }
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
          s2Key,
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
  const protection = agentProtectionOption(values);
  return async (err) => {
    let agent: Awaited<ReturnType<typeof startWatchingAgent>>;
    try {
      agent = await startWatchingAgent({
        mappings,
        protection: protection.open(err),
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
    } catch (error) {
      protection.close();
      throw error;
    }
    err.write(`agent: watching group memberships for ${mappings.length} session(s)\n`);
    if (s2Key !== undefined || controller !== undefined || protection.tokenGiven) {
      err.write(`agent: ${describeAeadEngine()}\n`); // sealed S2 (a key, or the controller's grant) or --token
    }
    return runningRole(
      'agent',
      withToken(agent, () => protection.close()),
      () => agentSample(agent.status()),
      () => {
        const s = agent.status();
        return `agent: ${s.sessions.map((x) => `${x.s1} ${x.active ? `delivering (${x.delivery?.delivered ?? 0}${x.delivery === undefined ? '' : restrictedLine(x.delivery, protection.tokenGiven)})` : x.refused === undefined ? 'idle' : 'refused'}`).join('; ')}`;
      },
    );
  };
}
