/**
 * TLS for the HTTP servers (`gatecast serve`, the repair controller): a certificate chain and its
 * private key from PEM files. Clients (fetch) verify against the system's roots, plus a private
 * CA named by NODE_EXTRA_CA_CERTS.
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { secretFileBytesMax } from '../limits.js';
import { InvalidArgumentError } from './errors.js';
import { readBoundedFile } from './files.js';

/** PEM certificate chain and key, ready for Fastify's `https` option. */
export interface TlsFiles {
  readonly cert: Buffer;
  readonly key: Buffer;
}

/** Reads and checks --tls-cert and --tls-key; both or neither. */
export function readTlsFiles(
  certPath: string | undefined,
  keyPath: string | undefined,
): TlsFiles | undefined {
  if (certPath === undefined && keyPath === undefined) {
    return undefined;
  }
  if (certPath === undefined || keyPath === undefined) {
    throw new InvalidArgumentError(
      certPath === undefined ? '--tls-cert' : '--tls-key',
      'give both --tls-cert and --tls-key',
    );
  }
  const read = (path: string, field: string) => {
    try {
      return readBoundedFile(path, secretFileBytesMax);
    } catch (error) {
      throw new InvalidArgumentError(field, (error as Error).message);
    }
  };
  const cert = read(certPath, '--tls-cert');
  const key = read(keyPath, '--tls-key');
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(cert);
  } catch {
    throw new InvalidArgumentError('--tls-cert', `${certPath} holds no PEM certificate`);
  }
  let privateKey: ReturnType<typeof createPrivateKey>;
  try {
    privateKey = createPrivateKey(key);
  } catch {
    throw new InvalidArgumentError('--tls-key', `${keyPath} holds no PEM private key (unencrypted)`);
  }
  if (!certificate.checkPrivateKey(privateKey)) {
    throw new InvalidArgumentError(
      '--tls-key',
      `${keyPath} is not the key of the certificate in ${certPath}`,
    );
  }
  return { cert, key };
}
