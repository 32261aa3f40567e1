/**
 * `gatecast daemon --config gatecast.yaml`: any mix of roles in one process. The file is checked
 * whole against the roles' settings schemas before anything starts; the roles then start in the
 * file's order, and a start that fails closes the roles already started. SIGINT or SIGTERM closes
 * them in reverse order (each leaves its groups, the subscription server closes its store) and the
 * process exits 0 within 2 s.
 */
import { parseArgs } from 'node:util';
import { isMap, isSeq } from 'yaml';
import { daemonStopMs } from '../limits.js';
import { parseEndpoint } from '../net/address.js';
import { type StatusServer, serveStatus } from '../net/status-http.js';
import { socketBufferReport } from '../net/udp.js';
import {
  closeWithin,
  endProcessSoon,
  type RoleStarter,
  type RunningRole,
  type Supervision,
  supervise,
} from './daemon.js';
import { exitIncomplete, exitOk, isOperatingError, UsageError } from './errors.js';
import {
  ConfigError,
  type OptionValues,
  optional,
  parseSeconds,
  readYamlFile,
  yamlValues,
} from './options.js';
import { metricsFor } from './role-metrics.js';
import { daemonSettings, roleSettingsByName } from './role-settings.js';
import { prepareServe } from './serve.js';
import { prepareAgent, prepareRepair, prepareRetransmit } from './servers.js';
import { checkSettings, locateIn, settingNames, withDefaults } from './settings.js';
import { applySocketBuffer, describeSocketBuffers, parseSocketBufferBytes } from './socket-buffer.js';

const usage = `usage: gatecast daemon --config gatecast.yaml

Run any mix of roles in one process, from one YAML file: a "daemon:" section for the process
(status, status-interval, log-format, socket-buffer) and one section per role, each a mapping of
the role's settings (the long option names of its command) or a list of them:

  serve       the subscription server, billing, the order server and the console (gatecast serve)
  retransmit  a retransmit server (gatecast retransmit)
  repair      a repair server, or with "controller:" the repair controller (gatecast repair)
  agent       an agent (gatecast agent)

The whole file is checked before anything starts; an error names the file, the line, the role
and the field, and exits 2. SIGINT or SIGTERM stops every role and exits 0.
docs/operations.md has a commented example and a systemd unit.
`;

/** How each role's checked settings become a starter. */
const preparers: Readonly<Record<string, (values: OptionValues) => RoleStarter | Promise<RoleStarter>>> = {
  serve: prepareServe,
  retransmit: prepareRetransmit,
  repair: prepareRepair,
  agent: prepareAgent,
};

/** One role of the file, checked and ready to start. */
export interface PlannedRole {
  /** Its place in the file: "repair", or "retransmit[1]" in a list. */
  readonly name: string;
  readonly values: OptionValues;
  readonly start: RoleStarter;
}

/** The whole file, checked. */
interface DaemonPlan {
  readonly daemon: OptionValues;
  readonly roles: readonly PlannedRole[];
}

/** Settings a role inherits from the daemon: section when it gives none itself. */
const inherited = ['log-format', 'status-interval'] as const;

/**
 * Reads and checks gatecast.yaml: every section known, every setting of its role's schema and
 * type, and every role's values as its command checks them (addresses, rates, files, ports free),
 * before anything opens. Each error names the file, the line and column, the role and the field.
 */
export async function planDaemon(path: string): Promise<DaemonPlan> {
  const { document, lines } = readYamlFile(path);
  const fail = (message: string) => new ConfigError(message);
  if (!isMap(document.contents)) {
    throw fail(
      `config ${path}: must be a mapping of role names to their settings (see gatecast daemon --help)`,
    );
  }
  const data = yamlValues(path, document) as Record<string, unknown>;
  const rootAt = locateIn(path, document, lines, []);
  const daemonSection = data.daemon ?? {};
  if (!isPlainObject(daemonSection)) {
    throw fail(`config ${rootAt('daemon')}daemon: must be a mapping of settings`);
  }
  const daemonAt = locateIn(path, document, lines, ['daemon']);
  const daemon = withDefaults(
    daemonSettings,
    checkSettings(daemonSettings, daemonSection, (name) => `config ${daemonAt(name)}daemon: `, fail),
  );
  checkDaemonValues(daemon, daemonAt);
  const roles: PlannedRole[] = [];
  for (const [key, section] of Object.entries(data)) {
    if (key === 'daemon') {
      continue;
    }
    const schema = Object.hasOwn(roleSettingsByName, key) ? roleSettingsByName[key] : undefined;
    const prepare = Object.hasOwn(preparers, key) ? preparers[key] : undefined;
    if (schema === undefined || prepare === undefined) {
      throw fail(
        `config ${rootAt(key)}"${key}" is not a role (roles: ${Object.keys(roleSettingsByName).join(', ')}; and daemon: for the process)`,
      );
    }
    const list = isSeq(document.get(key, true));
    const instances = Array.isArray(section) ? section : [section];
    if (instances.length === 0) {
      throw fail(`config ${rootAt(key)}${key}: an empty list; give the role's settings or remove it`);
    }
    for (const [index, instance] of instances.entries()) {
      const name = list ? `${key}[${index}]` : key;
      const at = locateIn(path, document, lines, list ? [key, index] : [key]);
      if (!isPlainObject(instance)) {
        throw fail(`config ${at(undefined)}${name}: must be a mapping of the role's settings`);
      }
      if ('socket-buffer' in instance) {
        throw fail(
          `config ${at('socket-buffer')}${name}: field "socket-buffer": set it once under daemon: (one process, one size for every socket)`,
        );
      }
      const given = checkSettings(schema, instance, (field) => `config ${at(field)}${name}: `, fail);
      for (const setting of inherited) {
        if (
          given[setting] === undefined &&
          daemon[setting] !== undefined &&
          settingNames(schema).includes(setting)
        ) {
          given[setting] = daemon[setting];
        }
      }
      const values = withDefaults(schema, given);
      let start: RoleStarter;
      try {
        start = await prepare(values);
      } catch (error) {
        if (!isOperatingError(error)) {
          throw error;
        }
        const field = /--([a-z0-9-]+)/.exec(error.message)?.[1];
        throw fail(
          `config ${at(field !== undefined && field in instance ? field : undefined)}${name}: ${error.message}`,
        );
      }
      roles.push({ name, values, start });
    }
  }
  if (roles.length === 0) {
    throw fail(
      `config ${path}: no role to run (give at least one of ${Object.keys(roleSettingsByName).join(', ')})`,
    );
  }
  return { daemon, roles };
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Checks the daemon: section's values as the commands check them. */
function checkDaemonValues(daemon: OptionValues, at: (name: string) => string): void {
  const check = (name: string, parse: (text: string) => unknown) => {
    const text = optional(daemon, name);
    if (text === undefined) {
      return;
    }
    try {
      parse(text);
    } catch (error) {
      if (isOperatingError(error)) {
        throw new ConfigError(`config ${at(name)}daemon: ${error.message}`);
      }
      throw error;
    }
  };
  check('status', (text) => parseEndpoint(text, '--status'));
  check('status-interval', (text) => parseSeconds(text, '--status-interval'));
  check('socket-buffer', (text) => parseSocketBufferBytes(text));
}

/** A started role with what watches it. */
export interface Started {
  readonly name: string;
  readonly role: RunningRole;
  readonly supervision: Supervision;
}

/** Closes started roles in reverse order, each after its watchers. */
async function closeAll(
  started: readonly Started[],
  signal: string,
  progress: { closing?: string | undefined; failed: string[] } = { failed: [] },
): Promise<void> {
  for (const { name, role, supervision } of [...started].reverse()) {
    progress.closing = name;
    await supervision.stop(signal).catch(() => undefined);
    await role.close().catch((error: unknown) => {
      progress.failed.push(`${name}: ${(error as Error)?.message}`);
    });
  }
  progress.closing = undefined;
}

/**
 * Starts the roles in order; when one fails, closes those started and rethrows, naming the role.
 * A stop asked for meanwhile starts no further role: the roles started are returned for closing.
 */
export async function startAll(
  plan: Pick<DaemonPlan, 'roles'>,
  err: NodeJS.WritableStream,
  stopAsked: () => boolean,
): Promise<Started[]> {
  const started: Started[] = [];
  for (const { name, values, start } of plan.roles) {
    if (stopAsked()) {
      break;
    }
    try {
      const role = await start(err);
      started.push({ name, role, supervision: await supervise(role, values, err) });
    } catch (error) {
      await closeAll(started, 'start failed');
      if (isOperatingError(error)) {
        error.message = `${name}: ${error.message} (the roles started before it are stopped)`;
      }
      throw error;
    }
  }
  return started;
}

/** The daemon's own status endpoint: every role's status, metrics and readiness. */
async function serveDaemonStatus(
  plan: DaemonPlan,
  started: readonly Started[],
  stopping: () => boolean,
): Promise<StatusServer | undefined> {
  const statusText = optional(plan.daemon, 'status');
  if (statusText === undefined) {
    return undefined;
  }
  const samplers = started.flatMap(({ role }) => (role.sampler === undefined ? [] : [role.sampler]));
  return serveStatus(
    parseEndpoint(statusText, '--status'),
    () => ({
      roles: Object.fromEntries(started.map(({ name, role }) => [name, role.status()])),
      socketBuffers: socketBufferReport(),
    }),
    {
      metrics: metricsFor('daemon', ...samplers),
      ready: async () => {
        const checks: Record<string, { ok: boolean; detail?: string }> = {};
        for (const { name, role } of started) {
          checks[name] = stopping()
            ? { ok: false, detail: 'stopping: leaving the groups' }
            : ((await role.ready?.()) ?? { ok: true });
        }
        return { ready: Object.values(checks).every((check) => check.ok), checks };
      },
    },
  );
}

/** Runs `gatecast daemon --config FILE` until SIGINT or SIGTERM. */
export async function runDaemonCommand(argv: string[], err: NodeJS.WritableStream): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { config: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    allowPositionals: false,
    strict: true,
  });
  if (values.help === true) {
    process.stdout.write(usage);
    return exitOk;
  }
  if (values.config === undefined) {
    throw new UsageError('--config FILE is required: the roles to run and their settings (gatecast.yaml)');
  }
  const plan = await planDaemon(values.config);
  applySocketBuffer(plan.daemon);
  // Listen for the stop before starting: a stop sent while the roles start is not lost.
  let stopSignal: string | undefined;
  const stopped = new Promise<string>((resolve) => {
    const stop = (signal: string) => {
      stopSignal = signal;
      resolve(signal);
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
  const started = await startAll(plan, err, () => stopSignal !== undefined);
  let stopping = false;
  let status: StatusServer | undefined;
  if (stopSignal === undefined) {
    try {
      status = await serveDaemonStatus(plan, started, () => stopping);
    } catch (error) {
      await closeAll(started, 'start failed');
      throw error;
    }
    err.write(`daemon: ${describeSocketBuffers()}\n`);
    err.write(
      `daemon: running ${started.map(({ name }) => name).join(', ')}${status === undefined ? '' : `; status on ${optional(plan.daemon, 'status')}`}\n`,
    );
  }
  const signal = await stopped;
  stopping = true;
  // Whatever still holds the event loop after the stop budget does not keep the process alive.
  endProcessSoon(exitOk, daemonStopMs);
  const progress: { closing?: string | undefined; failed: string[] } = {
    closing: 'the status endpoint',
    failed: [],
  };
  const closed = await closeWithin(
    (async () => {
      await status?.close();
      await closeAll(started, signal, progress);
    })(),
    daemonStopMs - 200,
  );
  // Which role did not close: the one still closing when the budget ran out, and any that failed.
  const problems = [
    ...progress.failed,
    ...(closed.ok ? [] : [`${progress.closing ?? 'a role'}: ${closed.reason}`]),
  ];
  if (problems.length > 0) {
    err.write(`daemon: did not stop cleanly (${signal}): ${problems.join('; ')}\n`);
    return exitIncomplete;
  }
  err.write(`daemon: stopped (${signal})\n`);
  return exitOk;
}
