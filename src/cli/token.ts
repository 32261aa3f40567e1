/** The bearer token a command presents: from --token-file, or from GATECAST_TOKEN. */
import { secretFileBytesMax } from '../limits.js';
import { FileRefused, readBoundedFile } from '../net/files.js';
import { UsageError } from './errors.js';

/** Reads the token; a missing or unreadable one is a usage error naming where it was looked for. */
export function readToken(file: string | undefined): string {
  if (file !== undefined) {
    let text: string;
    try {
      text = readBoundedFile(file, secretFileBytesMax).toString('utf8').trim();
    } catch (error) {
      if (error instanceof FileRefused) {
        throw new UsageError(`--token-file: ${error.message}`);
      }
      throw error;
    }
    if (text === '') {
      throw new UsageError(`--token-file: ${file} is empty`);
    }
    return text;
  }
  const token = process.env.GATECAST_TOKEN;
  if (token === undefined || token === '') {
    throw new UsageError('--token-file FILE or GATECAST_TOKEN is required');
  }
  return token;
}
