/** Exit codes of the gatecast command and the mapping from typed errors to them. */

/** The session or command succeeded. */
export const exitOk = 0;
/** The command ran but the result is not whole: packets missing, hash mismatch, timeout. */
export const exitIncomplete = 1;
/** The command line or configuration is wrong, or an input/interface cannot be used. */
export const exitUsage = 2;
/** An unexpected internal error (a bug). */
export const exitInternal = 70;

/** A usage error found by the CLI itself (unknown option, missing value, bad config file). */
export class UsageError extends Error {
  readonly code = 'GATECAST_ERR_USAGE';
}

const operatingCodes = new Set([
  'GATECAST_ERR_USAGE',
  'GATECAST_ERR_INVALID_ARGUMENT',
  'GATECAST_ERR_UNKNOWN_INTERFACE',
  'GATECAST_ERR_SOCKET',
  'GATECAST_ERR_SOURCE_INPUT',
  'GATECAST_ERR_SOURCE_SETTINGS',
  'GATECAST_ERR_CONFIG',
  'GATECAST_ERR_SECRET',
  'GATECAST_ERR_STORE_URL',
  'GATECAST_ERR_REQUEST',
  'GATECAST_ERR_SUITE_REFUSED',
  'GATECAST_ERR_AEAD_ENGINE',
  'GATECAST_ERR_KEY_EPOCHS',
  'GATECAST_ERR_TOKEN_REFUSED',
  'GATECAST_ERR_TOKEN',
  'GATECAST_ERR_PURSE_EMPTY',
  'GATECAST_ERR_PURSE_NOT_ENTITLED',
  'GATECAST_ERR_PURSE_ROLLBACK',
  'GATECAST_ERR_PURSE_INVALID',
  'ERR_PARSE_ARGS_UNKNOWN_OPTION',
  'ERR_PARSE_ARGS_INVALID_OPTION_VALUE',
  'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL',
]);

/** True for the errors that are the user's to fix (exit 2, one line, no stack). */
export function isOperatingError(error: unknown): error is Error & { code: string } {
  return error instanceof Error && operatingCodes.has((error as { code?: string }).code ?? '');
}
