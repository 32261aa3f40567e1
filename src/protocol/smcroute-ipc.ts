/**
 * smcrouted's control protocol (smcroute 2.5, its `ipc.c` and `smcroutectl.c`), spoken over the
 * daemon's unix stream socket (its -u) so the order server need not start one `smcroutectl` process
 * per command (docs/ordering.md, "Routers"). Pure codecs, no I/O.
 *
 * A request is one C `struct ipc_msg` followed by its arguments, in the host's byte order:
 *
 *     0                   1                   2                   3
 *     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |              len (size_t: 8 bytes on 64-bit hosts)            |
 *    +                                                               +
 *    |                                                               |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |         cmd (uint16)          |        count (uint16)         |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |      zero padding up to the alignment of a pointer (argv)     |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *    |  count NUL-terminated strings, then one more NUL ...          |
 *    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
 *
 * `len` is the whole request's size; the daemon takes a request only if it arrives in one read of
 * at most 1024 bytes (MX_CMDPKT_SZ). Commands: 'a' add a route (`IIF [SOURCE] GROUP OIF…`), 'r'
 * remove one (`IIF [SOURCE] GROUP`), 's' show (`routes`). The daemon answers each connection once,
 * with text ending in a NUL, then closes it: for add and remove an empty text means done and
 * anything else is its error message; for show the text is the table (its headings end in '_' and
 * '=' where smcroutectl draws rules).
 */
import { arch, endianness } from 'node:os';
import { type DecodeResult, invalid, ProtocolEncodeError, valid } from './errors.js';

/** smcrouted's largest request (MX_CMDPKT_SZ). */
export const smcrouteRequestBytesMax = 1024;
/** smcrouted's limit on a request's arguments (MAXVIFS + 3, with MAXVIFS 32). */
export const smcrouteArgumentsMax = 35;

/** The commands the order server sends. */
export type SmcrouteCommand = 'add' | 'remove' | 'show';
const commandByte: Record<SmcrouteCommand, number> = { add: 0x61, remove: 0x72, show: 0x73 };

const thirtyTwoBitArchitectures = new Set(['arm', 'ia32', 'mips', 'mipsel', 'ppc', 's390']);
/** sizeof(size_t) and the alignment of argv: a pointer's size on this host. */
const wordBytes = thirtyTwoBitArchitectures.has(arch()) ? 4 : 8;
const littleEndian = endianness() === 'LE';
const lenOffset = 0;
const cmdOffset = wordBytes;
const countOffset = wordBytes + 2;
/** offsetof(struct ipc_msg, argv): len, cmd and count, padded to a pointer's alignment. */
export const smcrouteHeaderBytes = wordBytes === 8 ? 16 : 8;

/**
 * Encodes one request. Throws ProtocolEncodeError when an argument is empty or holds a NUL, or the
 * request exceeds what smcrouted reads (a caller's bug: arguments are validated names and addresses).
 */
export function encodeSmcrouteRequest(command: SmcrouteCommand, args: readonly string[]): Buffer {
  if (args.length > smcrouteArgumentsMax) {
    throw new ProtocolEncodeError(
      `smcroute request: ${args.length} arguments (at most ${smcrouteArgumentsMax})`,
    );
  }
  let size = smcrouteHeaderBytes + 1;
  for (const arg of args) {
    if (arg.length === 0 || arg.includes('\0')) {
      throw new ProtocolEncodeError('smcroute request: an argument is empty or holds a NUL');
    }
    size += Buffer.byteLength(arg, 'utf8') + 1;
  }
  if (size > smcrouteRequestBytesMax) {
    throw new ProtocolEncodeError(`smcroute request: ${size} bytes (at most ${smcrouteRequestBytesMax})`);
  }
  const out = Buffer.alloc(size); // zeroed: padding and terminators
  if (wordBytes === 8) {
    if (littleEndian) {
      out.writeBigUInt64LE(BigInt(size), lenOffset);
    } else {
      out.writeBigUInt64BE(BigInt(size), lenOffset);
    }
  } else if (littleEndian) {
    out.writeUInt32LE(size, lenOffset);
  } else {
    out.writeUInt32BE(size, lenOffset);
  }
  if (littleEndian) {
    out.writeUInt16LE(commandByte[command], cmdOffset);
    out.writeUInt16LE(args.length, countOffset);
  } else {
    out.writeUInt16BE(commandByte[command], cmdOffset);
    out.writeUInt16BE(args.length, countOffset);
  }
  let offset = smcrouteHeaderBytes;
  for (const arg of args) {
    offset += out.write(arg, offset, 'utf8') + 1;
  }
  return out;
}

/**
 * Decodes the daemon's answer to one request (all it sent before closing the connection): the text
 * before the terminating NUL. An answer without its NUL was cut short.
 */
export function decodeSmcrouteReply(reply: Buffer): DecodeResult<string> {
  const end = reply.indexOf(0);
  if (end < 0) {
    return invalid('truncated', `smcroute reply of ${reply.length} bytes without its terminating NUL`);
  }
  if (end !== reply.length - 1) {
    return invalid('length-mismatch', `smcroute reply has ${reply.length - end - 1} bytes after its NUL`);
  }
  return valid(reply.toString('utf8', 0, end));
}
