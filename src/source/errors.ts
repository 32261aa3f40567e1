/** Operating failures of the source role, with stable codes listed in docs/errors.md. */

/** The input (file, stdin, relay socket) cannot be read. */
export class SourceInputError extends Error {
  readonly code = 'GATECAST_ERR_SOURCE_INPUT';
}

/** A source's settings describe packets the wire cannot carry (a payload too large for a REPAIR). */
export class SourceSettingsError extends Error {
  readonly code = 'GATECAST_ERR_SOURCE_SETTINGS';
}
