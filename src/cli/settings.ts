/**
 * Settings schemas: one TypeBox object per role that holds, for each setting, its type, its
 * default and its help. The command line (flags and --help), the configuration files (--config
 * FILE, and each role of `gatecast daemon --config gatecast.yaml`) and the console (which shows
 * the schemas) are all made from it, so a default is written once.
 *
 * A setting is keyed by its long option name. Text settings take a string, or a number in a file
 * (`buffer-age: 60`); the role's own parser then checks the value (an address, a rate) and names
 * the field when it is wrong.
 */
import assert from 'node:assert/strict';
import { Kind, type TObject, type TSchema, Type } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { isMap, type LineCounter, type Document as YamlDocument } from 'yaml';

/** What a setting carries besides its type and help. */
export interface SettingExtras {
  /** The default, applied when neither the command line nor a file gives the setting. */
  readonly default?: string | number | boolean;
  /** A one-letter alias on the command line. */
  readonly short?: string;
  /**
   * The setting the default belongs with (e.g. `restricted` for --suite): the default is filled
   * in only when that one is given, so a setting that needs it is never given by default.
   */
  readonly when?: string;
}

/** The schema keywords gatecast adds to a setting: its value placeholder and short flag. */
interface SettingKeywords {
  readonly description: string;
  readonly 'x-value'?: string;
  readonly 'x-short'?: string;
  readonly 'x-when'?: string;
  readonly default?: string | number | boolean;
}

function keywords(help: string, value: string | undefined, extras: SettingExtras): SettingKeywords {
  return {
    description: help,
    ...(value === undefined ? {} : { 'x-value': value }),
    ...(extras.short === undefined ? {} : { 'x-short': extras.short }),
    ...(extras.when === undefined ? {} : { 'x-when': extras.when }),
    ...(extras.default === undefined ? {} : { default: extras.default }),
  };
}

/** A text setting (an address, a list, a size): a string, or a number in a file. */
export function text(value: string, help: string, extras: SettingExtras = {}): TSchema {
  return Type.Union([Type.String(), Type.Number()], keywords(help, value, extras));
}

/** A setting that takes one of a few words. */
export function choice(words: readonly string[], help: string, extras: SettingExtras = {}): TSchema {
  return Type.Union(
    words.map((word) => Type.Literal(word)),
    keywords(help, words.join('|'), extras),
  );
}

/** An on/off setting: a flag on the command line, true or false in a file. */
export function flag(help: string, extras: SettingExtras = {}): TSchema {
  return Type.Boolean(keywords(help, undefined, extras));
}

/** The settings of one role: every setting optional here (which are required depends on the mode). */
export function settings(properties: Record<string, TSchema>): TObject {
  return Type.Object(
    Object.fromEntries(Object.entries(properties).map(([name, schema]) => [name, Type.Optional(schema)])),
    { additionalProperties: false },
  );
}

/**
 * The setting of this name in a schema, or undefined: only the schema's own settings, so a key
 * such as `constructor` or `__proto__` in a file is an unknown setting, not Object's.
 */
export function settingOf(schema: TObject, name: string): TSchema | undefined {
  return Object.hasOwn(schema.properties, name) ? schema.properties[name] : undefined;
}

/** The long names of a role's settings. */
export function settingNames(schema: TObject): string[] {
  return Object.keys(schema.properties);
}

/** True when the setting is an on/off flag. */
export function isFlag(schema: TSchema): boolean {
  return schema[Kind] === 'Boolean';
}

/** A setting's help line, with its default. */
export function settingHelp(schema: TSchema): string {
  const help = String(schema.description ?? '');
  return schema.default === undefined || isFlag(schema)
    ? help
    : `${help} (default ${String(schema.default)})`;
}

/** The default of a setting in a schema, as text (for a parser that also takes it from elsewhere). */
export function defaultOf(schema: TObject, name: string): string {
  const value = settingOf(schema, name)?.default as string | number | undefined;
  assert.ok(value !== undefined, `setting ${name} has a default`);
  return String(value);
}

/** The values of a role as its parsers read them: strings, and true for flags that are set. */
export type SettingValues = Record<string, string | boolean | undefined>;

/**
 * Fills in each setting's default where no value was given (a default that goes with another
 * setting only when that one is given).
 */
export function withDefaults(schema: TObject, values: SettingValues): SettingValues {
  const filled: SettingValues = { ...values };
  for (const [name, setting] of Object.entries(schema.properties)) {
    const when = setting['x-when'] as string | undefined;
    const applies = when === undefined || (values[when] !== undefined && values[when] !== false);
    if (filled[name] === undefined && setting.default !== undefined && !isFlag(setting) && applies) {
      filled[name] = String(setting.default);
    }
  }
  return filled;
}

/** What a value of this setting must be, in words. */
function expected(setting: TSchema): string {
  if (isFlag(setting)) {
    return 'must be true or false';
  }
  if (
    setting['x-value'] !== undefined &&
    Array.isArray(setting.anyOf) &&
    setting.anyOf.every((s) => 'const' in s)
  ) {
    return `must be one of ${(setting.anyOf as Array<{ const: string }>).map((s) => s.const).join(', ')}`;
  }
  return 'must be a string or a number';
}

/** Where a setting was given: the file and line of a key, for messages. */
export type Locate = (name: string | undefined) => string;

/**
 * Checks one role's settings from a file against its schema: every key a setting, every value of
 * its type. Returns the values as the parsers read them (numbers as text). Each error names the
 * place (file and line) and the field.
 */
export function checkSettings(
  schema: TObject,
  data: Record<string, unknown>,
  locate: Locate,
  fail: (message: string) => Error,
): SettingValues {
  const values: SettingValues = {};
  for (const [name, value] of Object.entries(data)) {
    const setting = settingOf(schema, name);
    if (setting === undefined) {
      throw fail(`${locate(name)}field "${name}" is not an option of this command`);
    }
    if (!Value.Check(setting, value)) {
      throw fail(`${locate(name)}field "${name}" ${expected(setting)}`);
    }
    values[name] = typeof value === 'number' ? String(value) : (value as string | boolean);
  }
  return values;
}

/**
 * Checks values given on the command line against the schema: a setting with a few words takes
 * one of them. (Text arrives as text; the role's parser checks what it means.)
 */
export function checkCommandLine(
  schema: TObject,
  values: SettingValues,
  fail: (message: string) => Error,
): void {
  for (const [name, value] of Object.entries(values)) {
    const setting = settingOf(schema, name);
    if (setting !== undefined && value !== undefined && !isFlag(setting) && !Value.Check(setting, value)) {
      throw fail(`--${name}: "${String(value)}" ${expected(setting).replace('must be', 'is not')}`);
    }
  }
}

/**
 * The "FILE:LINE:COLUMN: " prefix for a key of a YAML mapping at `path` (the mapping itself when
 * the key is absent or not found), from the parsed document's source positions.
 */
export function locateIn(
  file: string,
  document: YamlDocument.Parsed,
  lines: LineCounter,
  path: readonly (string | number)[],
): Locate {
  return (name) => {
    const mapping = path.length === 0 ? document.contents : document.getIn(path, true);
    let offset: number | undefined;
    if (isMap(mapping)) {
      const pair =
        name === undefined
          ? undefined
          : mapping.items.find((item) => (item.key as { value?: unknown } | null)?.value === name);
      offset =
        (pair?.key as { range?: [number, number, number] } | undefined)?.range?.[0] ?? mapping.range?.[0];
    }
    if (offset === undefined) {
      return `${file}: `;
    }
    const position = lines.linePos(offset);
    return `${file}:${position.line}:${position.col}: `;
  };
}
