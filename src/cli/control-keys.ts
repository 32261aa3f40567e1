/**
 * Options the source and the servers share: lists of endpoints and the control keys from
 * --secret-file. Apart from src/cli/daemon.ts so that `gatecast send` starts without loading the
 * daemons' metrics (prom-client) and logging (pino): start-up CPU is paid on every command.
 */
import { type ControlKey, readSecretFile } from '../crypto/control-auth.js';
import { type Endpoint, isMulticast, parseEndpoint } from '../net/address.js';
import { InvalidArgumentError } from '../net/errors.js';
import { UsageError } from './errors.js';
import { type OptionValues, optional } from './options.js';

/** Parses a comma-separated list of unicast ADDR:PORT (servers and sources talk by unicast). */
export function parseEndpointList(text: string | undefined, field: string): Endpoint[] {
  if (text === undefined || text.trim() === '') {
    return [];
  }
  return text.split(',').map((part) => parseUnicastEndpoint(part.trim(), field));
}

/**
 * Parses the ADDR:PORT of a unicast control endpoint (a server's --listen, a peer): a multicast
 * group there is refused, naming the field (a server listening on a group announced it as its
 * address, and NACKs and their answers went to the group).
 */
export function parseUnicastEndpoint(text: string, field: string): Endpoint {
  const endpoint = parseEndpoint(text, field);
  if (isMulticast(endpoint.address)) {
    throw new InvalidArgumentError(
      field,
      `${endpoint.address} is a multicast group; this option takes a unicast address (ADDR:PORT)`,
    );
  }
  return endpoint;
}

/** The control keys from --secret-file (required). */
export function keysFrom(values: OptionValues): ControlKey[] {
  const path = optional(values, 'secret-file');
  if (path === undefined) {
    throw new UsageError('--secret-file is required: control messages between servers are authenticated');
  }
  return [readSecretFile(path)];
}
