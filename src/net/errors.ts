/** Operating failures of the socket layer, with stable codes listed in docs/errors.md. */

/** A value given by the user (an address, port, interface or size) is not usable. */
export class InvalidArgumentError extends Error {
  readonly code = 'GATECAST_ERR_INVALID_ARGUMENT';
  /** The option or field the value came from, e.g. "--group". */
  readonly field: string;
  constructor(field: string, message: string) {
    super(`${field}: ${message}`);
    this.field = field;
  }
}

/** An interface named by the user does not exist or has no address of the needed family. */
export class UnknownInterfaceError extends Error {
  readonly code = 'GATECAST_ERR_UNKNOWN_INTERFACE';
}

/** A socket could not be opened, bound or joined. */
export class SocketError extends Error {
  readonly code = 'GATECAST_ERR_SOCKET';
}
