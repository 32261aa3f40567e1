/**
 * The PKCS#11 token (SoftHSM2 in tests and CI; any Cryptoki module with P-256 ECDH and AES key
 * wrap): the device key is generated inside the token with CKA_SENSITIVE true and
 * CKA_EXTRACTABLE false, and never leaves it (docs/security.md, "Tokens").
 *
 * A grant's service key is unwrapped inside the token: CKM_ECDH1_DERIVE (null KDF) of the device
 * key with the grant's ephemeral point makes a session AES key-encryption key, and
 * CKM_AES_KEY_WRAP unwraps the service key into a session object that is sensitive, not
 * extractable and good only for unwrapping. Only the short-lived traffic key is released: it is
 * unwrapped as an extractable session object, read, and destroyed. The token state (root key,
 * grants, rollback counter) is a private data object on the token.
 */
import { createRequire } from 'node:module';
import type * as Pkcs11Types from 'pkcs11js';
import type { Grant } from '../protocol/restricted.js';
import { TokenError } from './errors.js';
import { type Purse, Token, type TokenBackend, type TokenState, tokenStateProblem } from './token.js';

type Pkcs11Module = typeof Pkcs11Types;
type Handle = Buffer;

/** DER of the P-256 curve OID (1.2.840.10045.3.1.7), for CKA_EC_PARAMS. */
const p256Params = Buffer.from('06082a8648ce3d030107', 'hex');
const deviceLabel = 'gatecast-device';
const receiptLabel = 'gatecast-receipt';
/** DER of the Ed25519 curve OID (1.3.101.112), for CKA_EC_PARAMS. */
const ed25519Params = Buffer.from('06032b6570', 'hex');
/** PKCS#11 3.0 mechanisms (numeric in pkcs11js): CKM_EC_EDWARDS_KEY_PAIR_GEN and CKM_EDDSA. */
const mechanismEdwardsKeyPairGen = 0x1055;
const mechanismEddsa = 0x1057;
/** CKM_AES_CMAC (every-n-th-packet mode's group keys: src/crypto/group-key.ts). */
const mechanismAesCmac = 0x108a;
const stateLabel = 'gatecast-state';

/** The bytes of an attribute read back from the token; a token that returns none is broken. */
function attributeValue(attribute: Pkcs11Types.AttributeResult | undefined): Buffer {
  if (attribute === undefined || !Buffer.isBuffer(attribute.value)) {
    throw new TokenError('the PKCS#11 token returned no value for an attribute');
  }
  return attribute.value;
}

let cached: Pkcs11Module | undefined;
function pkcs11Module(): Pkcs11Module {
  if (cached === undefined) {
    try {
      cached = createRequire(import.meta.url)('pkcs11js') as Pkcs11Module;
    } catch (error) {
      throw new TokenError(`the PKCS#11 binding (pkcs11js) cannot be loaded: ${(error as Error).message}`);
    }
  }
  return cached;
}

/** Where a PKCS#11 token is: the module, the token label and the user PIN. */
export interface Pkcs11Location {
  /** Path of the Cryptoki module, e.g. /usr/lib/softhsm/libsofthsm2.so. */
  readonly modulePath: string;
  readonly tokenLabel: string;
  readonly pin: string;
}

/** Loaded libraries, shared by the tokens of one process (C_Initialize is once per process). */
const libraries = new Map<string, { library: Pkcs11Types.PKCS11; users: number }>();

function acquire(modulePath: string): Pkcs11Types.PKCS11 {
  const entry = libraries.get(modulePath);
  if (entry !== undefined) {
    entry.users += 1;
    return entry.library;
  }
  const pkcs11 = pkcs11Module();
  const library = new pkcs11.PKCS11();
  try {
    library.load(modulePath);
    library.C_Initialize();
  } catch (error) {
    throw new TokenError(`PKCS#11 module ${modulePath}: ${(error as Error).message}`);
  }
  libraries.set(modulePath, { library, users: 1 });
  return library;
}

function release(modulePath: string): void {
  const entry = libraries.get(modulePath);
  if (entry === undefined) {
    return;
  }
  entry.users -= 1;
  if (entry.users === 0) {
    libraries.delete(modulePath);
    try {
      entry.library.C_Finalize();
      entry.library.close();
    } catch {
      // Finalizing a library we are done with: nothing left to save.
    }
  }
}

function openSession(location: Pkcs11Location): { library: Pkcs11Types.PKCS11; session: Handle } {
  const pkcs11 = pkcs11Module();
  const library = acquire(location.modulePath);
  try {
    const slot = library
      .C_GetSlotList(true)
      .find((candidate) => library.C_GetTokenInfo(candidate).label.trim() === location.tokenLabel);
    if (slot === undefined) {
      throw new TokenError(
        `PKCS#11 module ${location.modulePath} has no token labelled ${location.tokenLabel}: initialize one with that label first (SoftHSM2: softhsm2-util --init-token --free --label ${location.tokenLabel} --pin PIN --so-pin SO-PIN)`,
      );
    }
    const session = library.C_OpenSession(slot, pkcs11.CKF_SERIAL_SESSION | pkcs11.CKF_RW_SESSION);
    try {
      library.C_Login(session, pkcs11.CKU_USER, location.pin);
    } catch (error) {
      library.C_CloseSession(session);
      const message = (error as Error).message;
      throw new TokenError(
        `PKCS#11 token ${location.tokenLabel}: ${message.includes('PIN') ? 'wrong PIN' : message}`,
      );
    }
    return { library, session };
  } catch (error) {
    release(location.modulePath);
    throw error instanceof TokenError ? error : new TokenError(`PKCS#11: ${(error as Error).message}`);
  }
}

function findOne(
  library: Pkcs11Types.PKCS11,
  session: Handle,
  template: Pkcs11Types.Template,
): Handle | undefined {
  library.C_FindObjectsInit(session, template);
  try {
    const found = library.C_FindObjects(session, 2);
    if (found.length > 1) {
      throw new TokenError('the PKCS#11 token holds two gatecast objects of one kind; re-initialize it');
    }
    return found[0];
  } finally {
    library.C_FindObjectsFinal(session);
  }
}

class Pkcs11Backend implements TokenBackend {
  readonly kind = 'pkcs11' as const;
  readonly #location: Pkcs11Location;
  readonly #library: Pkcs11Types.PKCS11;
  readonly #session: Handle;
  readonly #device: Handle;
  readonly #point: Buffer;
  readonly #sessionObjects: Handle[] = [];
  #closed = false;

  constructor(location: Pkcs11Location) {
    const pkcs11 = pkcs11Module();
    this.#location = location;
    const { library, session } = openSession(location);
    this.#library = library;
    this.#session = session;
    const device = findOne(library, session, [
      { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_PRIVATE_KEY },
      { type: pkcs11.CKA_LABEL, value: deviceLabel },
    ]);
    const devicePublic = findOne(library, session, [
      { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_PUBLIC_KEY },
      { type: pkcs11.CKA_LABEL, value: deviceLabel },
    ]);
    if (device === undefined || devicePublic === undefined) {
      this.close();
      throw new TokenError(
        `PKCS#11 token ${location.tokenLabel} has no gatecast device key: run gatecast token init`,
      );
    }
    this.#device = device;
    const [point] = library.C_GetAttributeValue(session, devicePublic, [{ type: pkcs11.CKA_EC_POINT }]);
    // CKA_EC_POINT is the DER OCTET STRING around the uncompressed point: 04 41 04 X Y.
    this.#point = Buffer.from(attributeValue(point).subarray(2));
  }

  devicePoint(): Buffer {
    return Buffer.from(this.#point);
  }

  #stateObject(): Handle | undefined {
    const pkcs11 = pkcs11Module();
    return findOne(this.#library, this.#session, [
      { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_DATA },
      { type: pkcs11.CKA_LABEL, value: stateLabel },
    ]);
  }

  loadState(): TokenState {
    const pkcs11 = pkcs11Module();
    const handle = this.#stateObject();
    if (handle === undefined) {
      throw new TokenError(
        `PKCS#11 token ${this.#location.tokenLabel} has no gatecast state: run gatecast token init`,
      );
    }
    const [value] = this.#library.C_GetAttributeValue(this.#session, handle, [{ type: pkcs11.CKA_VALUE }]);
    let state: unknown;
    try {
      state = JSON.parse(attributeValue(value).toString('utf8'));
    } catch {
      state = undefined;
    }
    const problem = state === undefined ? 'the state is not JSON' : tokenStateProblem(state);
    if (problem !== undefined) {
      throw new TokenError(
        `PKCS#11 token ${this.#location.tokenLabel}: its gatecast state is not usable: ${problem}`,
      );
    }
    return state as TokenState;
  }

  saveState(state: TokenState): void {
    const pkcs11 = pkcs11Module();
    const handle = this.#stateObject();
    const value = Buffer.from(JSON.stringify(state));
    // SoftHSM keeps a data object's value read-only: write the new state, then drop the old one.
    const next = createState(this.#library, this.#session, value, `${stateLabel}-next`);
    if (handle !== undefined) {
      this.#library.C_DestroyObject(this.#session, handle);
    }
    this.#library.C_SetAttributeValue(this.#session, next, [{ type: pkcs11.CKA_LABEL, value: stateLabel }]);
  }

  #receiptObject(kind: 'private' | 'public'): Handle | undefined {
    const pkcs11 = pkcs11Module();
    return findOne(this.#library, this.#session, [
      { type: pkcs11.CKA_CLASS, value: kind === 'private' ? pkcs11.CKO_PRIVATE_KEY : pkcs11.CKO_PUBLIC_KEY },
      { type: pkcs11.CKA_LABEL, value: receiptLabel },
    ]);
  }

  receiptPublicKey(create: boolean): Buffer | undefined {
    const pkcs11 = pkcs11Module();
    let publicKey = this.#receiptObject('public');
    if (publicKey === undefined) {
      if (!create) {
        return undefined;
      }
      // The receipt key is made inside the token and never leaves it (CKA_EXTRACTABLE false).
      const pair = this.#library.C_GenerateKeyPair(
        this.#session,
        { mechanism: mechanismEdwardsKeyPairGen },
        [
          { type: pkcs11.CKA_TOKEN, value: true },
          { type: pkcs11.CKA_EC_PARAMS, value: ed25519Params },
          { type: pkcs11.CKA_VERIFY, value: true },
          { type: pkcs11.CKA_LABEL, value: receiptLabel },
        ],
        [
          { type: pkcs11.CKA_TOKEN, value: true },
          { type: pkcs11.CKA_PRIVATE, value: true },
          { type: pkcs11.CKA_SENSITIVE, value: true },
          { type: pkcs11.CKA_EXTRACTABLE, value: false },
          { type: pkcs11.CKA_SIGN, value: true },
          { type: pkcs11.CKA_LABEL, value: receiptLabel },
        ],
      );
      publicKey = pair.publicKey;
    }
    const [point] = this.#library.C_GetAttributeValue(this.#session, publicKey, [
      { type: pkcs11.CKA_EC_POINT },
    ]);
    const value = attributeValue(point);
    // CKA_EC_POINT is the raw 32 bytes or their DER OCTET STRING (04 20 ...), by module.
    return Buffer.from(
      value.length === 34 && value[0] === 0x04 && value[1] === 0x20 ? value.subarray(2) : value,
    );
  }

  signReceipt(signed: Buffer): Buffer {
    const key = this.#receiptObject('private');
    if (key === undefined) {
      throw new TokenError('the token has no receipt key: enroll it with gatecast token enroll');
    }
    this.#library.C_SignInit(this.#session, { mechanism: mechanismEddsa }, key);
    return Buffer.from(this.#library.C_Sign(this.#session, signed, Buffer.alloc(64)));
  }

  unwrapServiceKey(grant: Grant): Handle | undefined {
    // The same ECDH and unwrap as a membership's keys: one key that stays inside and only unwraps.
    return this.unwrapTreeKeys(grant.ephemeralPublicKey, [grant.wrappedServiceKey])?.[0];
  }

  unwrapTreeKeys(ephemeralPublicKey: Buffer, wrapped: readonly Buffer[]): Handle[] | undefined {
    const pkcs11 = pkcs11Module();
    let kek: Handle | undefined;
    const made: Handle[] = [];
    try {
      kek = this.#library.C_DeriveKey(
        this.#session,
        {
          mechanism: pkcs11.CKM_ECDH1_DERIVE,
          parameter: {
            type: pkcs11.CK_PARAMS_EC_DH,
            kdf: pkcs11.CKD_NULL,
            publicData: ephemeralPublicKey,
          } as Pkcs11Types.ECDH1,
        },
        this.#device,
        secretTemplate({ extractable: false, unwrap: true, valueLength: 32 }),
      );
      for (const one of wrapped) {
        made.push(this.#unwrapUnwrapper(kek, one));
      }
      this.#sessionObjects.push(...made);
      return made;
    } catch {
      for (const handle of made) {
        this.#library.C_DestroyObject(this.#session, handle);
      }
      return undefined;
    } finally {
      if (kek !== undefined) {
        this.#library.C_DestroyObject(this.#session, kek);
      }
    }
  }

  unwrapTreeKey(kek: unknown, wrapped: Buffer): Handle | undefined {
    try {
      const key = this.#unwrapUnwrapper(kek as Handle, wrapped);
      this.#sessionObjects.push(key);
      return key;
    } catch {
      return undefined;
    }
  }

  forgetTreeKey(key: unknown): void {
    const index = this.#sessionObjects.indexOf(key as Handle);
    if (index >= 0) {
      this.#sessionObjects.splice(index, 1);
    }
    try {
      this.#library.C_DestroyObject(this.#session, key as Handle);
    } catch {
      // gone already: nothing to forget
    }
  }

  /** C_UnwrapKey of a 32-byte AES key that stays in the token and can only unwrap. */
  #unwrapUnwrapper(kek: Handle, wrapped: Buffer): Handle {
    return this.#library.C_UnwrapKey(
      this.#session,
      { mechanism: pkcs11Module().CKM_AES_KEY_WRAP },
      kek,
      wrapped,
      secretTemplate({ extractable: false, unwrap: true }),
    );
  }

  /** C_UnwrapKey of a 16- or 32-byte AES key that stays in the token and can only sign (CKM_AES_CMAC). */
  unwrapGroupShare(kek: unknown, wrapped: Buffer): Handle | undefined {
    try {
      const share = this.#library.C_UnwrapKey(
        this.#session,
        { mechanism: pkcs11Module().CKM_AES_KEY_WRAP },
        kek as Handle,
        wrapped,
        secretTemplate({ extractable: false, unwrap: false, sign: true }),
      );
      this.#sessionObjects.push(share);
      return share;
    } catch {
      return undefined;
    }
  }

  cmac(share: unknown, message: Buffer): Buffer {
    this.#library.C_SignInit(this.#session, { mechanism: mechanismAesCmac }, share as Handle);
    return Buffer.from(this.#library.C_Sign(this.#session, message, Buffer.alloc(16)));
  }

  unwrapTrafficKey(serviceKey: unknown, wrapped: Buffer): Buffer | undefined {
    const pkcs11 = pkcs11Module();
    let traffic: Handle | undefined;
    try {
      traffic = this.#library.C_UnwrapKey(
        this.#session,
        { mechanism: pkcs11.CKM_AES_KEY_WRAP },
        serviceKey as Handle,
        wrapped,
        secretTemplate({ extractable: true, unwrap: false }),
      );
      const [value] = this.#library.C_GetAttributeValue(this.#session, traffic, [{ type: pkcs11.CKA_VALUE }]);
      return Buffer.from(attributeValue(value));
    } catch {
      return undefined;
    } finally {
      if (traffic !== undefined) {
        this.#library.C_DestroyObject(this.#session, traffic);
      }
    }
  }

  close(): void {
    if (this.#closed) {
      return;
    }
    this.#closed = true;
    try {
      for (const handle of this.#sessionObjects) {
        this.#library.C_DestroyObject(this.#session, handle);
      }
      this.#library.C_Logout(this.#session);
      this.#library.C_CloseSession(this.#session);
    } catch {
      // The session is going away either way.
    }
    release(this.#location.modulePath);
  }
}

/**
 * A session secret-key template: AES, never on the token, sensitive unless it is a released
 * traffic key (those are the only extractable keys gatecast ever makes).
 */
function secretTemplate(options: {
  extractable: boolean;
  unwrap: boolean;
  sign?: boolean;
  valueLength?: number;
}): Pkcs11Types.Template {
  const pkcs11 = pkcs11Module();
  return [
    { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_SECRET_KEY },
    { type: pkcs11.CKA_KEY_TYPE, value: pkcs11.CKK_AES },
    { type: pkcs11.CKA_TOKEN, value: false },
    { type: pkcs11.CKA_SENSITIVE, value: !options.extractable },
    { type: pkcs11.CKA_EXTRACTABLE, value: options.extractable },
    { type: pkcs11.CKA_UNWRAP, value: options.unwrap },
    { type: pkcs11.CKA_ENCRYPT, value: false },
    { type: pkcs11.CKA_DECRYPT, value: false },
    { type: pkcs11.CKA_SIGN, value: options.sign === true },
    ...(options.valueLength === undefined
      ? []
      : [{ type: pkcs11.CKA_VALUE_LEN, value: options.valueLength }]),
  ];
}

function createState(
  library: Pkcs11Types.PKCS11,
  session: Handle,
  value: Buffer,
  label = stateLabel,
): Handle {
  const pkcs11 = pkcs11Module();
  return library.C_CreateObject(session, [
    { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_DATA },
    { type: pkcs11.CKA_TOKEN, value: true },
    { type: pkcs11.CKA_PRIVATE, value: true },
    { type: pkcs11.CKA_MODIFIABLE, value: true },
    { type: pkcs11.CKA_LABEL, value: label },
    { type: pkcs11.CKA_VALUE, value },
  ]);
}

/**
 * Puts a gatecast device key and state on an initialized PKCS#11 token (softhsm2-util
 * --init-token makes one). Refuses a token that already holds a device key.
 */
export function initPkcs11Token(location: Pkcs11Location, rootPublicKey: Buffer): void {
  if (rootPublicKey.length !== 32) {
    throw new TokenError('the operator root public key is 32 bytes (raw Ed25519)');
  }
  const pkcs11 = pkcs11Module();
  const { library, session } = openSession(location);
  try {
    const existing = findOne(library, session, [
      { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_PRIVATE_KEY },
      { type: pkcs11.CKA_LABEL, value: deviceLabel },
    ]);
    if (existing !== undefined) {
      throw new TokenError(`PKCS#11 token ${location.tokenLabel} already holds a gatecast device key`);
    }
    library.C_GenerateKeyPair(
      session,
      { mechanism: pkcs11.CKM_EC_KEY_PAIR_GEN },
      [
        { type: pkcs11.CKA_TOKEN, value: true },
        { type: pkcs11.CKA_EC_PARAMS, value: p256Params },
        { type: pkcs11.CKA_LABEL, value: deviceLabel },
      ],
      [
        { type: pkcs11.CKA_TOKEN, value: true },
        { type: pkcs11.CKA_PRIVATE, value: true },
        { type: pkcs11.CKA_SENSITIVE, value: true },
        { type: pkcs11.CKA_EXTRACTABLE, value: false },
        { type: pkcs11.CKA_DERIVE, value: true },
        { type: pkcs11.CKA_SIGN, value: false },
        { type: pkcs11.CKA_LABEL, value: deviceLabel },
      ],
    );
    const state: TokenState = {
      rootPublicKey: rootPublicKey.toString('hex'),
      grants: [],
      highestStreamTimeUs: 0,
    };
    createState(library, session, Buffer.from(JSON.stringify(state)));
  } catch (error) {
    throw error instanceof TokenError
      ? error
      : new TokenError(`PKCS#11 token ${location.tokenLabel}: ${(error as Error).message}`);
  } finally {
    try {
      library.C_Logout(session);
      library.C_CloseSession(session);
    } finally {
      release(location.modulePath);
    }
  }
}

/** Opens the gatecast token on a PKCS#11 module. */
export function openPkcs11Token(location: Pkcs11Location, purse?: Purse): Token {
  return new Token(new Pkcs11Backend(location), purse);
}

/** Reads the device private key's protection attributes (tests prove it cannot leave the token). */
export function devicePrivateKeyAttributes(location: Pkcs11Location): {
  sensitive: boolean;
  extractable: boolean;
  valueReadable: boolean;
} {
  const pkcs11 = pkcs11Module();
  const { library, session } = openSession(location);
  try {
    const device = findOne(library, session, [
      { type: pkcs11.CKA_CLASS, value: pkcs11.CKO_PRIVATE_KEY },
      { type: pkcs11.CKA_LABEL, value: deviceLabel },
    ]);
    if (device === undefined) {
      throw new TokenError('no device key');
    }
    const [sensitive, extractable] = library.C_GetAttributeValue(session, device, [
      { type: pkcs11.CKA_SENSITIVE },
      { type: pkcs11.CKA_EXTRACTABLE },
    ]);
    let valueReadable = true;
    try {
      library.C_GetAttributeValue(session, device, [{ type: pkcs11.CKA_VALUE }]);
    } catch {
      valueReadable = false;
    }
    return {
      sensitive: attributeValue(sensitive)[0] === 1,
      extractable: attributeValue(extractable)[0] === 1,
      valueReadable,
    };
  } finally {
    library.C_Logout(session);
    library.C_CloseSession(session);
    release(location.modulePath);
  }
}
