/**
 * Reading files the program is pointed at (journals, secrets, tokens, certificates): each must be a
 * regular file of bounded size, checked before a byte is read. A FIFO, a device (/dev/zero,
 * /dev/stdin), a /proc file or a directory is refused at once instead of blocking or filling memory.
 */
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';

/** A file that is not a regular file, is too large, or cannot be read; the message says which. */
export class FileRefused extends Error {
  /** The errno code when the system refused (ENOENT, EACCES, …), else undefined. */
  readonly errno: string | undefined;
  constructor(message: string, errno?: string) {
    super(message);
    this.errno = errno;
  }
}

/** Reads a regular file of at most maxBytes; undefined when it does not exist and that is allowed. */
export function readBoundedFile(path: string, maxBytes: number): Buffer {
  let fd: number;
  try {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new FileRefused(`cannot read ${path}: ${code ?? (error as Error).message}`, code);
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) {
      throw new FileRefused(`${path} is not a regular file`);
    }
    if (stat.size > maxBytes) {
      throw new FileRefused(`${path} holds ${stat.size} bytes, more than the ${maxBytes} allowed`);
    }
    const buffer = Buffer.alloc(stat.size + 1);
    let length = 0;
    for (;;) {
      let read: number;
      try {
        read = readSync(fd, buffer, length, buffer.length - length, null);
      } catch (error) {
        // EAGAIN: a file (/proc/kmsg) that would block the reader; anything else the system refused.
        const code = (error as NodeJS.ErrnoException).code;
        throw new FileRefused(`cannot read ${path}: ${code ?? (error as Error).message}`, code);
      }
      if (read === 0) {
        break;
      }
      length += read;
      if (length > stat.size) {
        // A /proc file states size 0 and still has content: not a file of known size.
        throw new FileRefused(`${path} is not a regular file of a stated size (it grew while read)`);
      }
    }
    return buffer.subarray(0, length);
  } finally {
    closeSync(fd);
  }
}
