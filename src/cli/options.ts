/**
 * Command-line and configuration-file parsing shared by the commands: settings (src/cli/settings.ts)
 * on the command line and in --config files (YAML or JSON, keyed by long option names), and the
 * value parsers for rates and sizes.
 */
import { isIP } from 'node:net';
import { parseArgs } from 'node:util';
import { type TObject, TypeGuard } from '@sinclair/typebox';
import { LineCounter, parseDocument, type Document as YamlDocument } from 'yaml';
import { configFileBytesMax, rateBitsPerSecondMax, settingDurationMsMax } from '../limits.js';
import {
  type Endpoint,
  formatEndpoint,
  isMulticast,
  isScopedGroup,
  multicastScope,
  parseGroup,
} from '../net/address.js';
import { InvalidArgumentError } from '../net/errors.js';
import { FileRefused, readBoundedFile } from '../net/files.js';
import { resolveInterface } from '../net/interfaces.js';
import { UsageError } from './errors.js';
import {
  checkCommandLine,
  checkSettings,
  flag,
  isFlag,
  locateIn,
  type SettingValues,
  settingHelp,
  settings,
  text,
  withDefaults,
} from './settings.js';

/** One option of a command, for the commands whose options are not a role's settings schema. */
export interface OptionSpec {
  readonly type: 'string' | 'boolean';
  readonly short?: string;
  readonly help: string;
  readonly value?: string;
}

export type OptionSpecs = Record<string, OptionSpec>;
export type OptionValues = SettingValues;

/** A configuration file could not be read or holds a bad field; names the file and the field. */
export class ConfigError extends Error {
  readonly code = 'GATECAST_ERR_CONFIG';
}

/** The settings schema of a command: its own, or one made from its option specs. */
export function schemaOf(specs: OptionSpecs | TObject): TObject {
  if (TypeGuard.IsObject(specs)) {
    return specs;
  }
  return settings(
    Object.fromEntries(
      Object.entries(specs).map(([name, spec]) => [
        name,
        spec.type === 'boolean'
          ? flag(spec.help, spec.short === undefined ? {} : { short: spec.short })
          : text(spec.value ?? 'VALUE', spec.help, spec.short === undefined ? {} : { short: spec.short }),
      ]),
    ),
  );
}

/**
 * Parses argv against the command's settings, merged over the --config file's values (the command
 * line wins), with the schema's defaults filled in. Unknown options and unknown config keys are
 * errors that name them.
 */
export function parseOptions(argv: string[], specs: OptionSpecs | TObject): OptionValues {
  return parseCommand(argv, specs, false).values;
}

/**
 * parseOptions for a command that also takes words (`gatecast admin grant alice repair`): the
 * values and the words in order.
 */
export function parseCommand(
  argv: string[],
  specs: OptionSpecs | TObject,
  allowPositionals = true,
): { values: OptionValues; positionals: string[] } {
  const schema = schemaOf(specs);
  const parsed = parseArgs({
    args: argv,
    options: {
      ...Object.fromEntries(
        Object.entries(schema.properties).map(([name, setting]) => {
          const type = isFlag(setting) ? ('boolean' as const) : ('string' as const);
          const short = setting['x-short'] as string | undefined;
          return [name, short === undefined ? { type } : { type, short }];
        }),
      ),
      config: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    allowPositionals,
    strict: true,
  });
  const values = parsed.values as OptionValues;
  checkCommandLine(schema, values, (message) => new UsageError(message));
  const configPath = values.config;
  const merged = typeof configPath === 'string' ? { ...readConfig(configPath, schema), ...values } : values;
  return { values: withDefaults(schema, merged), positionals: parsed.positionals };
}

/**
 * Reads a parsed YAML document (JSON is YAML too) from a file, with its line counter, or throws a
 * ConfigError naming the file and the line of the first syntax error.
 */
export function readYamlFile(path: string): { document: YamlDocument.Parsed; lines: LineCounter } {
  let source: string;
  try {
    // A regular file of bounded size, checked before a byte is read: a FIFO or a device would
    // block the command or fill its memory.
    source = readBoundedFile(path, configFileBytesMax).toString('utf8');
  } catch (error) {
    if (!(error instanceof FileRefused)) {
      throw error;
    }
    const reason = error.errno === undefined ? error.message : `cannot read: ${error.errno}`;
    throw new ConfigError(`config ${path}: ${reason}`);
  }
  if (path.endsWith('.json')) {
    try {
      JSON.parse(source);
    } catch (error) {
      throw new ConfigError(`config ${path}: not valid JSON: ${(error as Error).message}`);
    }
  }
  const lines = new LineCounter();
  const document = parseDocument(source, { lineCounter: lines, uniqueKeys: true, prettyErrors: true });
  const first = document.errors[0];
  if (first !== undefined) {
    const position = first.linePos?.[0];
    const where = position === undefined ? path : `${path}:${position.line}:${position.col}`;
    throw new ConfigError(
      `config ${where}: not valid YAML: ${first.message.split('\n')[0]?.replace(/ at line \d+, column \d+:?$/, '')}`,
    );
  }
  return { document, lines };
}

/**
 * The values of a parsed config file. Turning a document into values can still fail (aliases that
 * expand beyond the YAML library's bound, the "billion laughs"): that is the file's mistake, named
 * with it, not an internal error.
 */
export function yamlValues(path: string, document: YamlDocument.Parsed): unknown {
  try {
    return document.toJS();
  } catch (error) {
    throw new ConfigError(`config ${path}: not valid YAML: ${(error as Error).message}`);
  }
}

/** Reads a config file (YAML or JSON) whose keys are long option names, checked by the schema. */
export function readConfig(path: string, specs: OptionSpecs | TObject): OptionValues {
  const { document, lines } = readYamlFile(path);
  const data = yamlValues(path, document);
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    throw new ConfigError(`config ${path}: must be a mapping (JSON object) of option names to values`);
  }
  const locate = locateIn(path, document, lines, []);
  return checkSettings(
    schemaOf(specs),
    data as Record<string, unknown>,
    (name) => `config ${locate(name)}`,
    (message) => new ConfigError(message),
  );
}

const siMultipliers: Record<string, number> = { '': 1, k: 1e3, K: 1e3, m: 1e6, M: 1e6, g: 1e9, G: 1e9 };

/**
 * Parses a rate in bit/s: "20M", "500k", "1.5G", "100000", or "unlimited" for no pacing (returned
 * as 0). A rate of 0 (or one that rounds to it) is refused: it would read as "send nothing", and
 * the way to ask for no pacing is to say so.
 */
export function parseRate(text: string, field: string): number {
  if (text === 'unlimited') {
    return 0;
  }
  const match = /^(\d+(?:\.\d+)?)([kKmMgG]?)(?:bit\/s|bps)?$/.exec(text);
  const multiplier = siMultipliers[match?.[2] ?? ''];
  if (!match || multiplier === undefined) {
    throw new InvalidArgumentError(field, `"${text}" is not a rate in bit/s (e.g. 20M, 500k, 1G, unlimited)`);
  }
  const rate = Math.round(Number(match[1]) * multiplier);
  if (rate < 1) {
    throw new InvalidArgumentError(field, `${text} is not a rate; for no pacing write ${field} unlimited`);
  }
  if (rate > rateBitsPerSecondMax) {
    throw new InvalidArgumentError(
      field,
      `${text} is above the limit of ${rateBitsPerSecondMax / 1e9} Gbit/s`,
    );
  }
  return rate;
}

/** Parses an integer within [min, max]. */
export function parseInteger(text: string, field: string, min: number, max: number): number {
  if (!/^-?\d+$/.test(text)) {
    throw new InvalidArgumentError(field, `"${text}" is not an integer`);
  }
  const value = Number(text);
  if (value < min || value > max) {
    throw new InvalidArgumentError(field, `${value} is out of range (${min}-${max})`);
  }
  return value;
}

/** Parses a duration in seconds (fractions allowed) into milliseconds. */
export function parseSeconds(text: string, field: string, minMs = 0): number {
  if (!/^\d+(\.\d+)?$/.test(text)) {
    throw new InvalidArgumentError(field, `"${text}" is not a number of seconds`);
  }
  const ms = Math.round(Number(text) * 1000);
  if (ms < minMs) {
    // 0 (or a value that rounds to under the minimum) would end at once or spin a timer.
    throw new InvalidArgumentError(field, `${text} s is less than the ${minMs / 1000} s it takes at least`);
  }
  if (ms > settingDurationMsMax) {
    // Node's timers fire at once past this: a longer wait would end at once.
    throw new InvalidArgumentError(
      field,
      `${text} s is more than the ${Math.floor(settingDurationMsMax / 1000)} s a timer can wait`,
    );
  }
  return ms;
}

/** Parses the base URL of an HTTP server (http://HOST:PORT or https://…), without trailing slashes. */
export function parseServerUrl(text: string, field: string): string {
  const base = text.replace(/\/+$/, '');
  if (!/^https?:\/\/[^/]+$/.test(base)) {
    throw new UsageError(`${field}: "${text}" is not http://HOST:PORT`);
  }
  return base;
}

/** Formats the help text of a command from its settings (help and defaults). */
export function formatHelp(usage: string, summary: string, specs: OptionSpecs | TObject): string {
  const rows = Object.entries(schemaOf(specs).properties).map(([name, setting]) => {
    const short = setting['x-short'] as string | undefined;
    const value = setting['x-value'] as string | undefined;
    const left = `${short === undefined ? '    ' : `-${short}, `}--${name}${value ? ` ${value}` : ''}`;
    return `  ${left.padEnd(30)} ${settingHelp(setting)}`;
  });
  rows.push(
    `  ${'    --config FILE'.padEnd(30)} read options from a YAML or JSON file (keys are option names)`,
  );
  rows.push(`  ${'-h, --help'.padEnd(30)} show this help`);
  return `usage: ${usage}\n\n${summary}\n\noptions:\n${rows.join('\n')}\n`;
}

/** Requires a string option, naming it when absent. */
export function required(values: OptionValues, name: string): string {
  const value = values[name];
  if (typeof value !== 'string') {
    throw new UsageError(`--${name} is required`);
  }
  return value;
}

/** A string option or undefined. */
export function optional(values: OptionValues, name: string): string | undefined {
  const value = values[name];
  return typeof value === 'string' ? value : undefined;
}

/** What a group is used with, and the options those values came from (for the messages). */
export interface GroupContext {
  /** The interface (name or address) the group is joined or sent on; the kernel's choice when absent. */
  readonly iface: string | undefined;
  readonly ifaceField: string;
  /**
   * True when an absent interface is learned at run time (the watching agent takes it from the
   * host's group memberships), so a scoped group needs no interface option.
   */
  readonly ifaceLearned?: boolean;
  /** The sender of a source-specific join. */
  readonly source?: string | undefined;
  readonly sourceField?: string;
}

const scopeNames: Record<number, string> = { 0: 'reserved-scope', 1: 'interface-local', 2: 'link-local' };

/**
 * Parses a group option and checks it together with its interface and source, the one check every
 * command that takes a group uses (send, receive, retransmit, repair, agent): the group is
 * multicast; an interface or source given as an address is of the group's family; a scoped IPv6
 * group (ff02::/16 and any scope up to 2) has an interface to take its scope from; the interface
 * exists and has an address of the family. Each error is one line naming the options.
 */
export function parseGroupOn(text: string, field: string, context: GroupContext): Endpoint {
  const group = parseGroup(text, field);
  const { iface, ifaceField } = context;
  const ifaceFamily = iface === undefined ? 0 : isIP(iface);
  if (ifaceFamily !== 0 && ifaceFamily !== group.family) {
    throw new InvalidArgumentError(
      ifaceField,
      `${iface} is an IPv${ifaceFamily} address but ${field} ${formatEndpoint(group)} is IPv${group.family} (give the interface's name or an IPv${group.family} address)`,
    );
  }
  if (iface === undefined && context.ifaceLearned !== true && isScopedGroup(group)) {
    const scope = multicastScope(group.address) ?? 0;
    throw new InvalidArgumentError(
      field,
      `${group.address} is a ${scopeNames[scope] ?? 'scoped'} group (scope ${scope}): name the link with ${ifaceField} NAME`,
    );
  }
  if (iface !== undefined) {
    resolveInterface(iface, group.family);
  }
  const { source, sourceField = '--source' } = context;
  if (source !== undefined) {
    const sourceFamily = isIP(source);
    if (sourceFamily === 0) {
      throw new InvalidArgumentError(sourceField, `"${source}" is not an IPv4 or IPv6 address`);
    }
    if (sourceFamily !== group.family) {
      throw new InvalidArgumentError(
        sourceField,
        `${source} is an IPv${sourceFamily} address but ${field} ${formatEndpoint(group)} is IPv${group.family}`,
      );
    }
    // A source-specific join names the sender's own (unicast) address; the kernel takes any
    // address and the join then matches nothing, so the wait would only end at --timeout.
    if (isMulticast(source) || isUnspecified(source)) {
      throw new InvalidArgumentError(
        sourceField,
        `${source} is ${isMulticast(source) ? 'a multicast group' : 'the unspecified address'}, not a sender's address`,
      );
    }
  }
  return group;
}

/** Whether an address is 0.0.0.0 or :: (any spelling). */
function isUnspecified(address: string): boolean {
  return address === '0.0.0.0' || (isIP(address) === 6 && address.replace(/[:0]/g, '') === '');
}

/**
 * The interface a group is used on: the first of the named options that is given (e.g.
 * ifaceOption(values, 'emit-iface', 'iface') for "--emit-iface, default --iface"), with the source
 * option when one is named.
 */
export function ifaceOption(values: OptionValues, ...names: string[]): GroupContext {
  const name = names.find((candidate) => optional(values, candidate) !== undefined) ?? names[0] ?? 'iface';
  return { iface: optional(values, name), ifaceField: `--${name}` };
}

/**
 * parseGroupOn for a required group option and its interface (and source) option by name, e.g.
 * groupOption(values, 'group', 'iface', 'source').
 */
export function groupOption(
  values: OptionValues,
  name: string,
  ifaceName: string,
  sourceName?: string,
): Endpoint {
  return parseGroupOn(required(values, name), `--${name}`, {
    iface: optional(values, ifaceName),
    ifaceField: `--${ifaceName}`,
    ...(sourceName === undefined
      ? {}
      : { source: optional(values, sourceName), sourceField: `--${sourceName}` }),
  });
}
