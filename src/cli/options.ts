/**
 * Command-line and configuration-file parsing shared by the commands: option specs, --config
 * files (JSON objects keyed by long option names), and the value parsers for rates and sizes.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { rateBitsPerSecondMax } from '../limits.js';
import { InvalidArgumentError } from '../net/errors.js';
import { UsageError } from './errors.js';

/** One option of a command. */
export interface OptionSpec {
  readonly type: 'string' | 'boolean';
  readonly short?: string;
  readonly help: string;
  readonly value?: string;
}

export type OptionSpecs = Record<string, OptionSpec>;
export type OptionValues = Record<string, string | boolean | undefined>;

/** A configuration file could not be read or holds a bad field; names the file and the field. */
export class ConfigError extends Error {
  readonly code = 'GATECAST_ERR_CONFIG';
}

/**
 * Parses argv against the specs, merged over the --config file's values (the command line wins).
 * Unknown options and unknown config keys are errors that name them.
 */
export function parseOptions(argv: string[], specs: OptionSpecs): OptionValues {
  const parsed = parseArgs({
    args: argv,
    options: {
      ...Object.fromEntries(
        Object.entries(specs).map(([name, spec]) => [
          name,
          spec.short === undefined ? { type: spec.type } : { type: spec.type, short: spec.short },
        ]),
      ),
      config: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    allowPositionals: false,
    strict: true,
  });
  const values = parsed.values as OptionValues;
  const configPath = values.config;
  if (typeof configPath !== 'string') {
    return values;
  }
  return { ...readConfig(configPath, specs), ...values };
}

/** Reads a JSON config file whose keys are long option names. */
export function readConfig(path: string, specs: OptionSpecs): OptionValues {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError(`config ${path}: cannot read: ${(error as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (error) {
    throw new ConfigError(`config ${path}: not valid JSON: ${(error as Error).message}`);
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    throw new ConfigError(`config ${path}: must be a JSON object of option names to values`);
  }
  const values: OptionValues = {};
  for (const [key, value] of Object.entries(data)) {
    const spec = specs[key];
    if (spec === undefined) {
      throw new ConfigError(`config ${path}: field "${key}" is not an option of this command`);
    }
    if (spec.type === 'boolean' && typeof value !== 'boolean') {
      throw new ConfigError(`config ${path}: field "${key}" must be true or false`);
    }
    if (spec.type === 'string' && typeof value !== 'string' && typeof value !== 'number') {
      throw new ConfigError(`config ${path}: field "${key}" must be a string or a number`);
    }
    values[key] = typeof value === 'number' ? String(value) : value;
  }
  return values;
}

const siMultipliers: Record<string, number> = { '': 1, k: 1e3, K: 1e3, m: 1e6, M: 1e6, g: 1e9, G: 1e9 };

/** Parses a rate in bit/s: "20M", "500k", "1.5G", "100000", or "0"/"unlimited" for no pacing. */
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
export function parseSeconds(text: string, field: string): number {
  if (!/^\d+(\.\d+)?$/.test(text)) {
    throw new InvalidArgumentError(field, `"${text}" is not a number of seconds`);
  }
  return Math.round(Number(text) * 1000);
}

/** Parses the base URL of an HTTP server (http://HOST:PORT or https://…), without trailing slashes. */
export function parseServerUrl(text: string, field: string): string {
  const base = text.replace(/\/+$/, '');
  if (!/^https?:\/\/[^/]+$/.test(base)) {
    throw new UsageError(`${field}: "${text}" is not http://HOST:PORT`);
  }
  return base;
}

/** Formats the help text of a command. */
export function formatHelp(usage: string, summary: string, specs: OptionSpecs): string {
  const rows = Object.entries(specs).map(([name, spec]) => {
    const left = `${spec.short === undefined ? '    ' : `-${spec.short}, `}--${name}${spec.value ? ` ${spec.value}` : ''}`;
    return `  ${left.padEnd(30)} ${spec.help}`;
  });
  rows.push(`  ${'    --config FILE'.padEnd(30)} read options from a JSON file (keys are option names)`);
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
