/** Operating failures of the store layer, with stable codes listed in docs/errors.md. */

/** A database URL that is neither sqlite:PATH nor postgres://…; names the value. */
export class StoreUrlError extends Error {
  readonly code = 'GATECAST_ERR_STORE_URL';
}
