/**
 * Options the source and the servers share: lists of endpoints and the control keys from
 * --secret-file. Apart from src/cli/daemon.ts so that `gatecast send` starts without loading the
 * daemons' metrics (prom-client) and logging (pino): start-up CPU is paid on every command.
 */
import { type ControlKey, readSecretFile } from '../crypto/control-auth.js';
import { type Endpoint, parseEndpoint } from '../net/address.js';
import { UsageError } from './errors.js';
import { type OptionValues, optional } from './options.js';

/** Parses a comma-separated list of ADDR:PORT. */
export function parseEndpointList(text: string | undefined, field: string): Endpoint[] {
  if (text === undefined || text.trim() === '') {
    return [];
  }
  return text.split(',').map((part) => parseEndpoint(part.trim(), field));
}

/** The control keys from --secret-file (required). */
export function keysFrom(values: OptionValues): ControlKey[] {
  const path = optional(values, 'secret-file');
  if (path === undefined) {
    throw new UsageError('--secret-file is required: control messages between servers are authenticated');
  }
  return [readSecretFile(path)];
}
