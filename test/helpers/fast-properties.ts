/**
 * V8's own probe of an object's mode (`%HasFastProperties`), for tests of objects a role touches
 * once a packet: one in dictionary mode makes optimized code read and write each of its
 * properties through a generic lookup. The function is compiled after the flag that allows the
 * probe is set.
 */
import { setFlagsFromString } from 'node:v8';

setFlagsFromString('--allow-natives-syntax');

/** True when V8 keeps the object's properties in fast mode. */
export const hasFastProperties = new Function('object', 'return %HasFastProperties(object)') as (
  object: object,
) => boolean;
