/**
 * The size budget of every message (docs/protocol.md, "Size budgets"), derived in one place so
 * that what one role accepts always fits the next one: a DATA payload a source may send is one
 * whose REPAIR — the whole DATA datagram inside a control message with its trailer — still fits a
 * UDP datagram.
 */
import { datagramBytesMax } from '../limits.js';

/** The fixed header of every message. */
export const headerBytes = 32;

/** Authentication trailer at the end of every control message. */
export const authTrailerBytes = 36;

/** REPAIR body fields before the carried DATA datagram: status, reserved, count. */
export const repairFixedBytes = 4;

/** Largest body of any message: what fits a UDP datagram after the header. */
export const bodyBytesMax = datagramBytesMax - headerBytes;

/** Largest DATA datagram a REPAIR can carry. */
export const repairCarriedBytesMax = datagramBytesMax - headerBytes - repairFixedBytes - authTrailerBytes;

/**
 * Largest DATA payload: its datagram must fit inside a REPAIR. A source refuses a larger
 * --packet-size, a relay drops (and counts) larger input datagrams, and decoders reject larger
 * DATA, so no role ever holds a packet it could not repair.
 */
export const dataPayloadBytesMax = repairCarriedBytesMax - headerBytes;

/** Control body bytes left for a message's own fields after its trailer. */
export const controlFieldsBytesMax = bodyBytesMax - authTrailerBytes;

/** AEAD tag of a SEALED envelope (docs/protocol.md, "SEALED"): pinned to 16 bytes. */
export const sealedTagBytes = 16;

/**
 * Largest datagram a SEALED envelope can carry: header and tag around it still fit a UDP
 * datagram. Every datagram a repair server re-emits (a DATA datagram fits a REPAIR) is smaller.
 */
export const sealedCarriedBytesMax = datagramBytesMax - headerBytes - sealedTagBytes;
