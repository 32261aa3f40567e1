/*
 * The packet AEAD engine (docs/security.md, "The packet engine"): AES-128-GCM, AES-256-GCM and
 * ChaCha20-Poly1305 through the OpenSSL that node:crypto itself runs on (the node binary exports
 * it; an addon links against it at load, no second copy): EVP fetches and keys each context, and
 * packets call the fetched implementation's own functions (direct_setup, packetPath).
 *
 * What node:crypto in Node 20 cannot do is re-nonce a cipher object: every packet there costs a
 * new JavaScript cipher object, a native context and three returned buffers, about 8 us of CPU
 * for 1,400 bytes whose cipher work is 0.5 us. Here one context per key (the key schedule made
 * once) is re-initialised with each packet's nonce, and the output is written into buffers the
 * caller owns. The caller (src/crypto/aead-engine.ts) owns nonce discipline and tag pinning; this
 * file checks every length again and throws rather than read or write past a buffer.
 *
 *   create(name, key, encrypt) -> handle          one context, the key schedule made once
 *   seal(handle, nonce, aad, plain, out, tag)      out.length == plain.length, tag 16 bytes
 *   open(handle, nonce, aad, sealed, tag, out) -> bool   false: the tag did not verify; out zeroed
 *   dispose(handle)                                frees the context now (its key schedule wiped)
 *   digest(input, out, offset, length)             the first `length` (1-32) bytes of SHA-256(input)
 *                                                  written into out at offset (a manifest's packet hash)
 *   digestEquals(input, expected, offset, length) -> bool
 *                                                  true when the first `length` (1-32) bytes of
 *                                                  SHA-256(input) are expected[offset, offset + length)
 *                                                  (a DATA checked against its manifest's hash in place)
 *   sealDatagram(handle, nonce, plain, out, aadBytes, hashOut, hashOffset, hashLength)
 *       a whole datagram in one call: out[0, aadBytes) is the associated data (the caller wrote the
 *       sealed header there), plain[aadBytes, n) is sealed into out[aadBytes, n) and the tag into
 *       out[n, n + 16), n = plain.length; out may be plain itself. With hashOut (else null), the
 *       first hashLength bytes of SHA-256(out[0, n + 16)) go into hashOut at hashOffset.
 *   openDatagram(handle, nonce, sealed, aadBytes, out, outOffset) -> bool
 *       sealed[0, aadBytes) is the associated data, the last 16 bytes the tag; the plaintext of
 *       what is between goes into out at outOffset (in place: out = sealed, outOffset = aadBytes).
 *       false: the tag did not verify, and that range of out is zeroed.
 *
 *   sealPacket(handle, nonce, plain, out, hashOut, hashOffset, hashLength)
 *       sealDatagram for a DATA datagram whose header (32 bytes, the associated data) names the
 *       packet nonce given: read once, refused when it names another, copied to out with the
 *       sealed body's length
 *   openPacket(handle, datagram) -> length
 *       a sealed DATA datagram opened in place with the nonce from its header; the header's body
 *       length set to the plaintext's and the plain datagram's length returned, or -1 (body wiped);
 *       a body the header's 16-bit length cannot name (over 65,535 bytes) is refused unopened
 *
 *   packetPath(handle) -> "provider" | "evp"
 *       how the handle's packets reach OpenSSL: "provider" when the cipher implementation's own
 *       functions are called on a context of its own (direct_setup; EVP keys it and names it), "evp"
 *       when that could not be set up and the EVP context serves
 *
 *   sealPacketFunction(handle) -> sealPacket(nonce, plain, out, hashOut, hashOffset, hashLength)
 *   openPacketFunction(handle) -> openPacket(datagram) -> length
 *       sealPacket / openPacket bound to one handle (made to seal / to open): the function holds
 *       the context itself, so a packet costs no check of the handle; a call after dispose throws
 *   ed25519SigningKey(seed, publicOut) -> key       (these three only when libsodium was found)
 *       a signing key from a 32-byte Ed25519 seed, kept in memory this addon owns (wiped when the
 *       key object is collected); its 32-byte public key is written to publicOut
 *   ed25519Sign(key, message, out, offset)          the 64-byte signature into out at offset
 *   ed25519Verify(signature, message, publicKey) -> bool
 *       an Ed25519 signature (64 bytes) over message under a raw public key (32 bytes), checked by
 *       libsodium's crypto_sign_verify_detached: about 49 us on this machine's CPUs against OpenSSL
 *       3.0's 72-75 us (signing: 22 us against 27-35). libsodium is not linked: the addon looks for the shared library at load
 *       (dlopen of libsodium.so.23, .26, or libsodium.so) and exports the three and `sodium`
 *       (its version) only when it is there and initialises; else node:crypto checks signatures.
 *
 * A handle is a frozen object that wraps the context and carries this file's type tag: anything
 * else (a plain object, another addon's wrapped object, a handle copied by structuredClone) is
 * refused before its pointer is read. An output that partly overlaps its input is refused (the
 * same buffer for both, in place, is allowed).
 */
#define NAPI_VERSION 8 /* type tags and napi_object_freeze; Node 20 has 9 */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <node_api.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/provider.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define NONCE_BYTES 12
#define TAG_BYTES 16
#define SHA256_BYTES 32
#define ED25519_SIGNATURE_BYTES 64
#define ED25519_PUBLIC_BYTES 32

/* libsodium's Ed25519 check, when the shared library was found (set once, at the first load). */
typedef int (*sodium_verify_t)(const unsigned char *signature, const unsigned char *message,
                               unsigned long long message_length, const unsigned char *public_key);
static sodium_verify_t sodium_verify = NULL;
typedef int (*sodium_sign_t)(unsigned char *signature, unsigned long long *signature_length,
                             const unsigned char *message, unsigned long long message_length,
                             const unsigned char *secret_key);
static sodium_sign_t sodium_sign = NULL;
typedef int (*sodium_seed_keypair_t)(unsigned char *public_key, unsigned char *secret_key, const unsigned char *seed);
static sodium_seed_keypair_t sodium_seed_keypair = NULL;
typedef void (*sodium_memzero_t)(void *bytes, size_t length);
static sodium_memzero_t sodium_memzero = NULL;
#define ED25519_SEED_BYTES 32
#define ED25519_SECRET_BYTES 64

/* Marks the objects ed25519SigningKey() makes (napi_type_tag_object). */
static const napi_type_tag signing_key_tag = {0x6761746563617374ULL, 0x6564323535313931ULL};
static const char *sodium_version = NULL;

/*
 * What digest() keeps per environment (the main thread and each worker load the addon once each,
 * and one environment runs on one thread at a time): SHA-256 fetched once (an implicit fetch per
 * call would look the name up again) and one digest context, re-initialised for each input.
 */
typedef struct {
  EVP_MD *sha256;
  EVP_MD_CTX *ctx;
} digest_state_t;

static void digest_state_free(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  digest_state_t *state = data;
  EVP_MD_CTX_free(state->ctx);
  EVP_MD_free(state->sha256);
  free(state);
}

/* Marks the objects create() makes as AEAD handles (napi_type_tag_object). */
static const napi_type_tag handle_tag = {0x6761746563617374ULL, 0x616561642d763031ULL};

/*
 * The cipher implementation's own functions, from the provider OpenSSL fetched it from (its
 * dispatch table, OSSL_PROVIDER_query_operation): a packet calls them directly on a context of
 * the implementation's own. Through EVP, each packet's nonce went through
 * EVP_CIPHER_CTX_get_iv_length, which in OpenSSL 3.0 asks the implementation for the length by
 * parameter name (strcmp against each name it knows), and the tag through EVP_CIPHER_CTX_ctrl,
 * which turns the control into a parameter: in a verifying receiver's profile, 104 samples beside
 * 244 for AES-GCM itself (docs/security.md, "The packet engine"). Where a function is missing the
 * EVP context is used, as before.
 */
typedef struct {
  OSSL_FUNC_cipher_freectx_fn *freectx;
  OSSL_FUNC_cipher_encrypt_init_fn *encrypt_init;
  OSSL_FUNC_cipher_decrypt_init_fn *decrypt_init;
  OSSL_FUNC_cipher_update_fn *update;
  OSSL_FUNC_cipher_final_fn *final;
  OSSL_FUNC_cipher_get_ctx_params_fn *get_ctx_params;
  OSSL_FUNC_cipher_set_ctx_params_fn *set_ctx_params;
} direct_t;

typedef struct {
  EVP_CIPHER_CTX *ctx; /* NULL once disposed */
  int encrypt;
  /* The JavaScript objects that point at this struct: its handle and the packet functions bound to it. */
  int refs;
  /* The implementation's context and functions, keyed as ctx is; algctx NULL when EVP is used. */
  void *algctx;
  direct_t direct;
} aead_t;

static void aead_free(aead_t *aead) {
  if (aead->algctx != NULL) {
    aead->direct.freectx(aead->algctx); /* the implementation cleanses its key schedule */
    aead->algctx = NULL;
  }
  if (aead->ctx != NULL) {
    EVP_CIPHER_CTX_free(aead->ctx); /* resets the context: the key schedule is cleansed */
    aead->ctx = NULL;
  }
}

/*
 * GATECAST_AEAD_EVP_ONLY=1 in the environment when the addon is first loaded: no handle takes the
 * direct path, every packet goes through the EVP context (read once per process; for the tests
 * that hold the EVP path to node:crypto's bytes, and to rule the direct path out).
 */
static int evp_only = 0;
static pthread_once_t evp_only_once = PTHREAD_ONCE_INIT;
static void read_evp_only(void) {
  const char *value = getenv("GATECAST_AEAD_EVP_ONLY");
  evp_only = value != NULL && strcmp(value, "1") == 0;
}

/* True when `name` is one of the colon-separated names in `names` (OSSL_ALGORITHM's list). */
static int names_hold(const char *names, const char *name) {
  size_t length = strlen(name);
  for (const char *at = names; at != NULL && *at != '\0';) {
    const char *end = strchr(at, ':');
    size_t token = end == NULL ? strlen(at) : (size_t)(end - at);
    if (token == length && strncasecmp(at, name, length) == 0) {
      return 1;
    }
    at = end == NULL ? NULL : end + 1;
  }
  return 0;
}

/*
 * Sets up the direct path for a context EVP has keyed: the same implementation (the provider and
 * the name EVP fetched), a context of its own, keyed alike. 0, with nothing kept, when the
 * provider does not list it or lacks a function; the EVP context then serves.
 */
static int direct_setup(aead_t *aead, const unsigned char *key, size_t key_length) {
  const EVP_CIPHER *cipher = EVP_CIPHER_CTX_get0_cipher(aead->ctx);
  const OSSL_PROVIDER *provider = cipher == NULL ? NULL : EVP_CIPHER_get0_provider(cipher);
  const char *name = cipher == NULL ? NULL : EVP_CIPHER_get0_name(cipher);
  if (provider == NULL || name == NULL) {
    return 0;
  }
  int no_store = 0;
  const OSSL_ALGORITHM *algorithms = OSSL_PROVIDER_query_operation(provider, OSSL_OP_CIPHER, &no_store);
  const OSSL_DISPATCH *dispatch = NULL;
  for (const OSSL_ALGORITHM *at = algorithms; at != NULL && at->algorithm_names != NULL; at++) {
    if (names_hold(at->algorithm_names, name)) {
      dispatch = at->implementation;
      break;
    }
  }
  OSSL_FUNC_cipher_newctx_fn *newctx = NULL;
  direct_t direct = {0};
  for (const OSSL_DISPATCH *f = dispatch; f != NULL && f->function_id != 0; f++) {
    switch (f->function_id) {
    case OSSL_FUNC_CIPHER_NEWCTX:
      newctx = OSSL_FUNC_cipher_newctx(f);
      break;
    case OSSL_FUNC_CIPHER_FREECTX:
      direct.freectx = OSSL_FUNC_cipher_freectx(f);
      break;
    case OSSL_FUNC_CIPHER_ENCRYPT_INIT:
      direct.encrypt_init = OSSL_FUNC_cipher_encrypt_init(f);
      break;
    case OSSL_FUNC_CIPHER_DECRYPT_INIT:
      direct.decrypt_init = OSSL_FUNC_cipher_decrypt_init(f);
      break;
    case OSSL_FUNC_CIPHER_UPDATE:
      direct.update = OSSL_FUNC_cipher_update(f);
      break;
    case OSSL_FUNC_CIPHER_FINAL:
      direct.final = OSSL_FUNC_cipher_final(f);
      break;
    case OSSL_FUNC_CIPHER_GET_CTX_PARAMS:
      direct.get_ctx_params = OSSL_FUNC_cipher_get_ctx_params(f);
      break;
    case OSSL_FUNC_CIPHER_SET_CTX_PARAMS:
      direct.set_ctx_params = OSSL_FUNC_cipher_set_ctx_params(f);
      break;
    default:
      break;
    }
  }
  OSSL_PROVIDER_unquery_operation(provider, OSSL_OP_CIPHER, algorithms);
  if (newctx == NULL || direct.freectx == NULL || direct.encrypt_init == NULL || direct.decrypt_init == NULL ||
      direct.update == NULL || direct.final == NULL || direct.get_ctx_params == NULL ||
      direct.set_ctx_params == NULL) {
    return 0;
  }
  void *algctx = newctx(OSSL_PROVIDER_get0_provider_ctx(provider));
  if (algctx == NULL) {
    return 0;
  }
  /* The nonce length is the implementation's default (12 for all three suites): no parameter is set. */
  int keyed = aead->encrypt ? direct.encrypt_init(algctx, key, key_length, NULL, 0, NULL)
                            : direct.decrypt_init(algctx, key, key_length, NULL, 0, NULL);
  if (keyed != 1) {
    direct.freectx(algctx);
    return 0;
  }
  aead->direct = direct;
  aead->algctx = algctx;
  return 1;
}

/* The finalizer of the handle and of each bound packet function: the last one frees the struct. */
static void finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  aead_t *aead = data;
  if (--aead->refs > 0) {
    return;
  }
  aead_free(aead);
  free(aead);
}

static napi_value fail(napi_env env, const char *message) {
  napi_throw_error(env, "GATECAST_ERR_CIPHER", message);
  return NULL;
}

/* A Buffer argument's bytes; false (with a TypeError thrown) when it is not one. */
static int buffer_arg(napi_env env, napi_value value, unsigned char **data, size_t *length, const char *what) {
  /* napi_get_buffer_info refuses (napi_invalid_arg) anything that is not a Buffer or typed array view. */
  void *bytes = NULL;
  if (napi_get_buffer_info(env, value, &bytes, length) != napi_ok) {
    napi_throw_type_error(env, "GATECAST_ERR_CIPHER", what);
    return 0;
  }
  *data = bytes;
  if (*length > INT_MAX) {
    napi_throw_range_error(env, "GATECAST_ERR_CIPHER", "a buffer is larger than the engine takes");
    return 0;
  }
  return 1;
}

/* The struct a handle wraps, disposed or not; NULL (with a TypeError thrown) when it is no handle. */
static aead_t *unwrap_handle(napi_env env, napi_value value) {
  napi_valuetype type;
  bool tagged = false;
  void *data = NULL;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_object ||
      napi_check_object_type_tag(env, value, &handle_tag, &tagged) != napi_ok || !tagged ||
      napi_unwrap(env, value, &data) != napi_ok || data == NULL) {
    napi_throw_type_error(env, "GATECAST_ERR_CIPHER", "not an AEAD handle");
    return NULL;
  }
  return data;
}

static aead_t *handle_arg(napi_env env, napi_value value, int encrypt) {
  aead_t *aead = unwrap_handle(env, value);
  if (aead == NULL) {
    return NULL;
  }
  if (aead->ctx == NULL) {
    fail(env, "the AEAD handle was disposed");
    return NULL;
  }
  if (aead->encrypt != encrypt) {
    fail(env, encrypt ? "a handle made to open cannot seal" : "a handle made to seal cannot open");
    return NULL;
  }
  return aead;
}

/* True when two byte ranges share a byte. */
static int overlapping(const unsigned char *a, size_t a_length, const unsigned char *b, size_t b_length) {
  if (a_length == 0 || b_length == 0) {
    return 0;
  }
  uintptr_t a_start = (uintptr_t)a, b_start = (uintptr_t)b;
  return a_start < b_start + b_length && b_start < a_start + a_length;
}

/* True when two byte ranges share a byte but do not start at the same one (in place is fine). */
static int partly_overlapping(const unsigned char *a, size_t a_length, const unsigned char *b, size_t b_length) {
  if (a_length == 0 || b_length == 0 || a == b) {
    return 0;
  }
  uintptr_t a_start = (uintptr_t)a, b_start = (uintptr_t)b;
  return a_start < b_start + b_length && b_start < a_start + a_length;
}

/*
 * One packet sealed on a context: the associated data, then `length` bytes of plain into out (as
 * long), and the tag. 1 on success; on failure out is wiped (nothing half-sealed is handed on).
 */
static int evp_seal(aead_t *aead, const unsigned char *nonce, const unsigned char *aad, size_t aad_length,
                    const unsigned char *plain, size_t length, unsigned char *out, unsigned char *tag) {
  if (aead->algctx != NULL) {
    const direct_t *d = &aead->direct;
    size_t written = 0, aad_written = 0, final_written = 0;
    OSSL_PARAM params[2] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, TAG_BYTES),
                            OSSL_PARAM_construct_end()};
    if (d->encrypt_init(aead->algctx, NULL, 0, nonce, NONCE_BYTES, NULL) == 1 &&
        d->update(aead->algctx, NULL, &aad_written, aad_length, aad, aad_length) == 1 &&
        d->update(aead->algctx, out, &written, length, plain, length) == 1 && written <= length &&
        d->final(aead->algctx, out + written, &final_written, length - written) == 1 &&
        written + final_written == length && d->get_ctx_params(aead->algctx, params) == 1) {
      /* As EVP_CTRL_AEAD_GET_TAG: ChaCha20-Poly1305 copies the tag without setting return_size. */
      return 1;
    }
    OPENSSL_cleanse(out, length);
    return 0;
  }
  int written = 0;
  int final_written = 0;
  if (EVP_CipherInit_ex(aead->ctx, NULL, NULL, NULL, nonce, 1) == 1 &&
      EVP_CipherUpdate(aead->ctx, NULL, &written, aad, (int)aad_length) == 1 &&
      EVP_CipherUpdate(aead->ctx, out, &written, plain, (int)length) == 1 && (size_t)written <= length &&
      EVP_CipherFinal_ex(aead->ctx, out + written, &final_written) == 1 &&
      (size_t)written + (size_t)final_written == length &&
      EVP_CIPHER_CTX_ctrl(aead->ctx, EVP_CTRL_AEAD_GET_TAG, TAG_BYTES, tag) == 1) {
    return 1;
  }
  OPENSSL_cleanse(out, length);
  return 0;
}

/*
 * One packet opened on a context: `length` bytes of sealed into out (as long), checked against
 * the tag (read before anything is written) and the associated data. 1 when it verified; else 0
 * and out is wiped, so no unauthenticated plaintext is handed on.
 */
static int evp_open_raw(aead_t *aead, const unsigned char *nonce, const unsigned char *aad, size_t aad_length,
                        const unsigned char *sealed, size_t length, const unsigned char *tag, unsigned char *out) {
  unsigned char expected[TAG_BYTES];
  memcpy(expected, tag, TAG_BYTES); /* the tag may sit where an in-place open writes */
  if (aead->algctx != NULL) {
    const direct_t *d = &aead->direct;
    size_t written = 0, aad_written = 0, final_written = 0;
    OSSL_PARAM params[2] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, expected, TAG_BYTES),
                            OSSL_PARAM_construct_end()};
    int ok = d->decrypt_init(aead->algctx, NULL, 0, nonce, NONCE_BYTES, NULL) == 1 &&
             d->set_ctx_params(aead->algctx, params) == 1 &&
             d->update(aead->algctx, NULL, &aad_written, aad_length, aad, aad_length) == 1 &&
             d->update(aead->algctx, out, &written, length, sealed, length) == 1 && written <= length &&
             d->final(aead->algctx, out + written, &final_written, length - written) == 1 &&
             written + final_written == length;
    if (!ok) {
      OPENSSL_cleanse(out, length);
    }
    return ok;
  }
  int written = 0;
  int final_written = 0;
  int ok = EVP_CipherInit_ex(aead->ctx, NULL, NULL, NULL, nonce, 0) == 1 &&
           EVP_CIPHER_CTX_ctrl(aead->ctx, EVP_CTRL_AEAD_SET_TAG, TAG_BYTES, expected) == 1 &&
           EVP_CipherUpdate(aead->ctx, NULL, &written, aad, (int)aad_length) == 1 &&
           EVP_CipherUpdate(aead->ctx, out, &written, sealed, (int)length) == 1 && (size_t)written <= length &&
           EVP_CipherFinal_ex(aead->ctx, out + written, &final_written) == 1 &&
           (size_t)written + (size_t)final_written == length;
  if (!ok) {
    OPENSSL_cleanse(out, length); /* nothing of a packet that fails is left readable */
  }
  return ok;
}

/* evp_open_raw's answer as a JavaScript boolean. */
static napi_value evp_open(napi_env env, aead_t *aead, const unsigned char *nonce, const unsigned char *aad,
                           size_t aad_length, const unsigned char *sealed, size_t length, const unsigned char *tag,
                           unsigned char *out) {
  int ok = evp_open_raw(aead, nonce, aad, aad_length, sealed, length, tag, out);
  napi_value result;
  if (napi_get_boolean(env, ok ? true : false, &result) != napi_ok) {
    return fail(env, "could not return the result");
  }
  return result;
}

static napi_value create(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3) {
    return fail(env, "create(name, key, encrypt) takes three arguments");
  }
  char name[32];
  size_t name_length = 0;
  if (napi_get_value_string_utf8(env, argv[0], name, sizeof name, &name_length) != napi_ok) {
    napi_throw_type_error(env, "GATECAST_ERR_CIPHER", "the suite name must be a string");
    return NULL;
  }
  const EVP_CIPHER *cipher = NULL;
  size_t key_bytes = 0;
  /* A name cut at the buffer's end, or with a NUL inside ("aes-256-gcm\0…"), names no suite. */
  if (name_length >= sizeof name - 1 || strlen(name) != name_length) {
    return fail(env, "unknown suite");
  }
  if (strcmp(name, "aes-128-gcm") == 0) {
    cipher = EVP_aes_128_gcm();
    key_bytes = 16;
  } else if (strcmp(name, "aes-256-gcm") == 0) {
    cipher = EVP_aes_256_gcm();
    key_bytes = 32;
  } else if (strcmp(name, "chacha20-poly1305") == 0) {
    cipher = EVP_chacha20_poly1305();
    key_bytes = 32;
  } else {
    return fail(env, "unknown suite");
  }
  unsigned char *key = NULL;
  size_t key_length = 0;
  if (!buffer_arg(env, argv[1], &key, &key_length, "the key must be a Buffer")) {
    return NULL;
  }
  if (key_length != key_bytes) {
    return fail(env, "the key length does not fit the suite");
  }
  bool encrypt = false;
  if (napi_get_value_bool(env, argv[2], &encrypt) != napi_ok) {
    napi_throw_type_error(env, "GATECAST_ERR_CIPHER", "encrypt must be a boolean");
    return NULL;
  }
  aead_t *aead = calloc(1, sizeof *aead);
  if (aead == NULL) {
    return fail(env, "out of memory");
  }
  aead->encrypt = encrypt ? 1 : 0;
  aead->refs = 1; /* the handle's, once wrapped; freed here until then */
  aead->ctx = EVP_CIPHER_CTX_new();
  if (aead->ctx == NULL ||
      EVP_CipherInit_ex(aead->ctx, cipher, NULL, NULL, NULL, aead->encrypt) != 1 ||
      EVP_CIPHER_CTX_ctrl(aead->ctx, EVP_CTRL_AEAD_SET_IVLEN, NONCE_BYTES, NULL) != 1 ||
      EVP_CipherInit_ex(aead->ctx, NULL, NULL, key, NULL, aead->encrypt) != 1) {
    aead_free(aead);
    free(aead);
    return fail(env, "OpenSSL could not make the AEAD context");
  }
  if (!evp_only) {
    direct_setup(aead, key, key_length); /* else the EVP context serves */
  }
  napi_value handle;
  if (napi_create_object(env, &handle) != napi_ok) {
    aead_free(aead);
    free(aead);
    return fail(env, "could not make the AEAD handle");
  }
  if (napi_wrap(env, handle, aead, finalize, NULL, NULL) != napi_ok) {
    aead_free(aead);
    free(aead);
    return fail(env, "could not make the AEAD handle");
  }
  /* From here the handle owns aead: the finalizer frees it, whatever fails next. */
  if (napi_type_tag_object(env, handle, &handle_tag) != napi_ok || napi_object_freeze(env, handle) != napi_ok) {
    return fail(env, "could not make the AEAD handle");
  }
  return handle;
}

static napi_value seal(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 6) {
    return fail(env, "seal(handle, nonce, aad, plain, out, tag) takes six arguments");
  }
  aead_t *aead = handle_arg(env, argv[0], 1);
  unsigned char *nonce, *aad, *plain, *out, *tag;
  size_t nonce_length, aad_length, plain_length, out_length, tag_length;
  if (aead == NULL || !buffer_arg(env, argv[1], &nonce, &nonce_length, "the nonce must be a Buffer") ||
      !buffer_arg(env, argv[2], &aad, &aad_length, "the associated data must be a Buffer") ||
      !buffer_arg(env, argv[3], &plain, &plain_length, "the plaintext must be a Buffer") ||
      !buffer_arg(env, argv[4], &out, &out_length, "the output must be a Buffer") ||
      !buffer_arg(env, argv[5], &tag, &tag_length, "the tag must be a Buffer")) {
    return NULL;
  }
  if (nonce_length != NONCE_BYTES || tag_length != TAG_BYTES || out_length != plain_length) {
    return fail(env, "seal: the nonce must be 12 bytes, the tag 16, the output as long as the plaintext");
  }
  if (partly_overlapping(plain, plain_length, out, out_length) ||
      (tag_length > 0 && partly_overlapping(tag, tag_length, out, out_length)) || (tag == out && out_length > 0)) {
    return fail(env, "seal: the output partly overlaps the plaintext or the tag");
  }
  if (!evp_seal(aead, nonce, aad, aad_length, plain, plain_length, out, tag)) {
    return fail(env, "OpenSSL could not seal the packet");
  }
  return NULL;
}

static napi_value open_(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 6) {
    return fail(env, "open(handle, nonce, aad, sealed, tag, out) takes six arguments");
  }
  aead_t *aead = handle_arg(env, argv[0], 0);
  unsigned char *nonce, *aad, *sealed, *tag, *out;
  size_t nonce_length, aad_length, sealed_length, tag_length, out_length;
  if (aead == NULL || !buffer_arg(env, argv[1], &nonce, &nonce_length, "the nonce must be a Buffer") ||
      !buffer_arg(env, argv[2], &aad, &aad_length, "the associated data must be a Buffer") ||
      !buffer_arg(env, argv[3], &sealed, &sealed_length, "the ciphertext must be a Buffer") ||
      !buffer_arg(env, argv[4], &tag, &tag_length, "the tag must be a Buffer") ||
      !buffer_arg(env, argv[5], &out, &out_length, "the output must be a Buffer")) {
    return NULL;
  }
  if (nonce_length != NONCE_BYTES || tag_length != TAG_BYTES || out_length != sealed_length) {
    return fail(env, "open: the nonce must be 12 bytes, the tag 16, the output as long as the ciphertext");
  }
  if (partly_overlapping(sealed, sealed_length, out, out_length)) {
    return fail(env, "open: the output partly overlaps the ciphertext");
  }
  return evp_open(env, aead, nonce, aad, aad_length, sealed, sealed_length, tag, out);
}

static napi_value dispose(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1) {
    napi_throw_type_error(env, "GATECAST_ERR_CIPHER", "not an AEAD handle");
    return NULL;
  }
  aead_t *aead = unwrap_handle(env, argv[0]);
  if (aead != NULL) {
    aead_free(aead); /* the struct stays until the handle is collected: a later call finds ctx NULL */
  }
  return NULL;
}

/*
 * packetPath(handle): how the handle's packets go through OpenSSL, "provider" (the implementation's
 * own functions, direct_setup) or "evp"; for tests and the engine's description.
 */
static napi_value packet_path(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1) {
    return fail(env, "packetPath(handle) takes one argument");
  }
  aead_t *aead = unwrap_handle(env, argv[0]);
  if (aead == NULL) {
    return NULL;
  }
  if (aead->ctx == NULL) {
    return fail(env, "the AEAD handle was disposed");
  }
  const char *path = aead->algctx != NULL ? "provider" : "evp";
  napi_value result;
  if (napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &result) != napi_ok) {
    return fail(env, "could not return the path");
  }
  return result;
}

/* A non-negative integer argument up to INT_MAX; false (with a TypeError thrown) when not one. */
static int index_arg(napi_env env, napi_value value, size_t *index, const char *what) {
  double number = 0;
  if (napi_get_value_double(env, value, &number) != napi_ok || !(number >= 0 && number <= INT_MAX) ||
      number != (double)(size_t)number) {
    napi_throw_type_error(env, "GATECAST_ERR_CIPHER", what);
    return 0;
  }
  *index = (size_t)number;
  return 1;
}

/* The per-environment SHA-256 state (digest_state_t), or NULL with an error thrown. */
static digest_state_t *digest_state(napi_env env) {
  digest_state_t *state = NULL;
  if (napi_get_instance_data(env, (void **)&state) != napi_ok || state == NULL) {
    fail(env, "the addon has no SHA-256 in this environment");
    return NULL;
  }
  return state;
}

/* SHA-256 of input; its first `length` bytes into out. 0 (with an error thrown) on failure. */
static int sha256_into(napi_env env, digest_state_t *state, const unsigned char *input, size_t input_length,
                       unsigned char *out, size_t length) {
  unsigned char md[SHA256_BYTES];
  unsigned int md_length = 0;
  if (EVP_DigestInit_ex2(state->ctx, state->sha256, NULL) != 1 ||
      EVP_DigestUpdate(state->ctx, input, input_length) != 1 ||
      EVP_DigestFinal_ex(state->ctx, md, &md_length) != 1 || md_length != SHA256_BYTES) {
    fail(env, "OpenSSL could not hash the input");
    return 0;
  }
  memcpy(out, md, length);
  return 1;
}

/* Where a sealing call writes the sealed datagram's hash: out is NULL when it hashes nothing. */
typedef struct {
  unsigned char *out;
  size_t length;
  digest_state_t *state;
} hash_place_t;

/* An error naming the call it came from. */
static napi_value fail_in(napi_env env, const char *call, const char *message) {
  char text[200];
  snprintf(text, sizeof text, "%s: %s", call, message);
  return fail(env, text);
}

/*
 * A sealing call's hashOut, hashOffset and hashLength (argv[0..2]): none when hashOut is null or
 * undefined; else 1-32 bytes within hashOut and apart from the sealed datagram they hash. 0, with
 * an error thrown, when refused.
 */
static int hash_place_arg(napi_env env, napi_value *argv, const char *call, const unsigned char *sealed,
                          size_t sealed_length, hash_place_t *place) {
  place->out = NULL;
  place->length = 0;
  place->state = NULL;
  napi_valuetype type;
  if (napi_typeof(env, argv[0], &type) != napi_ok) {
    fail_in(env, call, "cannot read hashOut");
    return 0;
  }
  if (type == napi_null || type == napi_undefined) {
    return 1;
  }
  unsigned char *hash_out;
  size_t hash_out_length, offset, length;
  if (!buffer_arg(env, argv[0], &hash_out, &hash_out_length, "hashOut must be a Buffer or null") ||
      !index_arg(env, argv[1], &offset, "the hash offset must be a non-negative integer") ||
      !index_arg(env, argv[2], &length, "the hash length must be a non-negative integer")) {
    return 0;
  }
  if (length < 1 || length > SHA256_BYTES || offset > hash_out_length || length > hash_out_length - offset) {
    fail_in(env, call, "the hash is 1-32 bytes, within hashOut");
    return 0;
  }
  if (overlapping(hash_out + offset, length, sealed, sealed_length)) {
    fail_in(env, call, "the hash would be written over the sealed datagram");
    return 0;
  }
  place->state = digest_state(env);
  if (place->state == NULL) {
    return 0;
  }
  place->out = hash_out + offset;
  place->length = length;
  return 1;
}

static napi_value seal_datagram(napi_env env, napi_callback_info info) {
  size_t argc = 8;
  napi_value argv[8];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 8) {
    return fail(env, "sealDatagram(handle, nonce, plain, out, aadBytes, hashOut, hashOffset, hashLength) takes eight arguments");
  }
  aead_t *aead = handle_arg(env, argv[0], 1);
  unsigned char *nonce, *plain, *out;
  size_t nonce_length, plain_length, out_length, aad_bytes;
  if (aead == NULL || !buffer_arg(env, argv[1], &nonce, &nonce_length, "the nonce must be a Buffer") ||
      !buffer_arg(env, argv[2], &plain, &plain_length, "the plaintext must be a Buffer") ||
      !buffer_arg(env, argv[3], &out, &out_length, "the output must be a Buffer") ||
      !index_arg(env, argv[4], &aad_bytes, "the associated data length must be a non-negative integer")) {
    return NULL;
  }
  if (nonce_length != NONCE_BYTES) {
    return fail(env, "sealDatagram: the nonce must be 12 bytes");
  }
  if (aad_bytes > plain_length || plain_length > INT_MAX - TAG_BYTES || out_length < plain_length + TAG_BYTES) {
    return fail(env, "sealDatagram: the associated data must fit the plaintext, the output hold it and the tag");
  }
  size_t sealed_length = plain_length + TAG_BYTES;
  if (out != plain && overlapping(plain, plain_length, out, sealed_length)) {
    return fail(env, "sealDatagram: the output partly overlaps the plaintext");
  }
  hash_place_t hash;
  if (!hash_place_arg(env, argv + 5, "sealDatagram", out, sealed_length, &hash)) {
    return NULL;
  }
  if (!evp_seal(aead, nonce, out, aad_bytes, plain + aad_bytes, plain_length - aad_bytes, out + aad_bytes,
                out + plain_length)) {
    return fail(env, "OpenSSL could not seal the packet");
  }
  if (hash.out != NULL && !sha256_into(env, hash.state, out, sealed_length, hash.out, hash.length)) {
    return NULL;
  }
  return NULL;
}

static napi_value open_datagram(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 6) {
    return fail(env, "openDatagram(handle, nonce, sealed, aadBytes, out, outOffset) takes six arguments");
  }
  aead_t *aead = handle_arg(env, argv[0], 0);
  unsigned char *nonce, *sealed, *out;
  size_t nonce_length, sealed_length, aad_bytes, out_length, out_offset;
  if (aead == NULL || !buffer_arg(env, argv[1], &nonce, &nonce_length, "the nonce must be a Buffer") ||
      !buffer_arg(env, argv[2], &sealed, &sealed_length, "the sealed datagram must be a Buffer") ||
      !index_arg(env, argv[3], &aad_bytes, "the associated data length must be a non-negative integer") ||
      !buffer_arg(env, argv[4], &out, &out_length, "the output must be a Buffer") ||
      !index_arg(env, argv[5], &out_offset, "the output offset must be a non-negative integer")) {
    return NULL;
  }
  if (nonce_length != NONCE_BYTES) {
    return fail(env, "openDatagram: the nonce must be 12 bytes");
  }
  if (sealed_length < TAG_BYTES || aad_bytes > sealed_length - TAG_BYTES) {
    return fail(env, "openDatagram: the sealed datagram is shorter than its associated data and tag");
  }
  size_t body_length = sealed_length - TAG_BYTES - aad_bytes;
  if (out_offset > out_length || body_length > out_length - out_offset) {
    return fail(env, "openDatagram: the plaintext does not fit the output at that offset");
  }
  unsigned char *target = out + out_offset;
  unsigned char *body = sealed + aad_bytes;
  /* In place (the plaintext over its own ciphertext) or apart; never over the header or the tag. */
  if (target != body && overlapping(target, body_length, sealed, sealed_length)) {
    return fail(env, "openDatagram: the output partly overlaps the sealed datagram");
  }
  return evp_open(env, aead, nonce, sealed, aad_bytes, body, body_length, sealed + sealed_length - TAG_BYTES,
                  target);
}

/*
 * The gatecast header (docs/protocol.md, "Header"): a sealed DATA's associated data, and where the
 * fields of its packet nonce lie (incarnation 4 bytes, key epoch 2, zero 2, sequence 4; see
 * writePacketNonce in src/crypto/suites.ts). The loader's known-answer check seals and opens a
 * packet both ways, so a layout that differed from the JavaScript's would leave the addon unused.
 */
#define PACKET_HEADER_BYTES 32
#define OFFSET_KEY_EPOCH 6
#define OFFSET_SEQUENCE 12
#define OFFSET_BODY_LENGTH 24
#define OFFSET_INCARNATION 28
#define BODY_BYTES_MAX 0xffff

/* A DATA packet's nonce, from its header. */
static void packet_nonce(const unsigned char *header, unsigned char *nonce) {
  memcpy(nonce, header + OFFSET_INCARNATION, 4);
  memcpy(nonce + 4, header + OFFSET_KEY_EPOCH, 2);
  nonce[6] = 0;
  nonce[7] = 0;
  memcpy(nonce + 8, header + OFFSET_SEQUENCE, 4);
}

static void write_body_length(unsigned char *header, size_t length) {
  header[OFFSET_BODY_LENGTH] = (unsigned char)(length >> 8);
  header[OFFSET_BODY_LENGTH + 1] = (unsigned char)length;
}

/* A JavaScript integer; NULL with an error thrown when it cannot be made. */
static napi_value int_result(napi_env env, int32_t value) {
  napi_value result;
  if (napi_create_int32(env, value, &result) != napi_ok) {
    return fail(env, "could not return the result");
  }
  return result;
}

/*
 * sealPacket(handle, nonce, plain, out, hashOut, hashOffset, hashLength): a plain DATA datagram
 * (header ‖ payload) sealed into out as header ‖ ciphertext ‖ tag, its body length set to the
 * sealed body's; out may be plain itself. `nonce` is the one the sealer checked was never used:
 * the header is read once, into memory of this call's own, and refused unless the nonce its
 * fields make is that one (plain may be shared with another thread, or read differently by the
 * caller's checks: the nonce used is always the nonce checked). With hashOut (else null), the
 * first hashLength bytes of the sealed datagram's SHA-256 go into hashOut at hashOffset.
 */
/* sealPacket's work once its handle is known: argv holds nonce, plain, out, hashOut, hashOffset, hashLength. */
static napi_value seal_packet_with(napi_env env, aead_t *aead, napi_value *argv) {
  unsigned char *nonce, *plain, *out;
  size_t nonce_length, plain_length, out_length;
  if (!buffer_arg(env, argv[0], &nonce, &nonce_length, "the nonce must be a Buffer") ||
      !buffer_arg(env, argv[1], &plain, &plain_length, "the plaintext must be a Buffer") ||
      !buffer_arg(env, argv[2], &out, &out_length, "the output must be a Buffer")) {
    return NULL;
  }
  if (nonce_length != NONCE_BYTES) {
    return fail(env, "sealPacket: the nonce must be 12 bytes");
  }
  if (plain_length < PACKET_HEADER_BYTES || plain_length - PACKET_HEADER_BYTES + TAG_BYTES > BODY_BYTES_MAX) {
    return fail(env, "sealPacket: a DATA datagram is a 32-byte header and at most 65,519 bytes of payload");
  }
  size_t sealed_length = plain_length + TAG_BYTES;
  if (out_length < sealed_length) {
    return fail(env, "sealPacket: the output does not hold the sealed datagram");
  }
  if (out != plain && overlapping(plain, plain_length, out, sealed_length)) {
    return fail(env, "sealPacket: the output partly overlaps the plaintext");
  }
  hash_place_t hash;
  if (!hash_place_arg(env, argv + 3, "sealPacket", out, sealed_length, &hash)) {
    return NULL;
  }
  unsigned char header[PACKET_HEADER_BYTES];
  unsigned char named[NONCE_BYTES];
  memcpy(header, plain, PACKET_HEADER_BYTES);
  packet_nonce(header, named);
  if (memcmp(named, nonce, NONCE_BYTES) != 0) {
    return fail(env, "sealPacket: the header names another nonce than the one the sealer checked");
  }
  write_body_length(header, plain_length - PACKET_HEADER_BYTES + TAG_BYTES);
  memcpy(out, header, PACKET_HEADER_BYTES);
  /* The associated data is the header as checked, not a second read of out. */
  if (!evp_seal(aead, named, header, PACKET_HEADER_BYTES, plain + PACKET_HEADER_BYTES,
                plain_length - PACKET_HEADER_BYTES, out + PACKET_HEADER_BYTES, out + plain_length)) {
    OPENSSL_cleanse(out, PACKET_HEADER_BYTES);
    return fail(env, "OpenSSL could not seal the packet");
  }
  if (hash.out != NULL && !sha256_into(env, hash.state, out, sealed_length, hash.out, hash.length)) {
    return NULL;
  }
  return NULL;
}

/*
 * openPacket(handle, datagram) -> length: a sealed DATA datagram (header ‖ ciphertext ‖ tag)
 * opened in place, its nonce taken from the header; on success the header's body length is set
 * to the plaintext's and the plain datagram's length returned, else -1 and the body is wiped.
 */
/* openPacket's work once its handle is known. */
static napi_value open_packet_with(napi_env env, aead_t *aead, napi_value datagram_value) {
  unsigned char *datagram;
  size_t length;
  if (!buffer_arg(env, datagram_value, &datagram, &length, "the sealed datagram must be a Buffer")) {
    return NULL;
  }
  if (length < PACKET_HEADER_BYTES + TAG_BYTES) {
    return fail(env, "openPacket: the datagram is shorter than a header and a tag");
  }
  if (length - PACKET_HEADER_BYTES > BODY_BYTES_MAX) {
    /* No header names such a body (sealPacket seals none): refused before it is opened. */
    return fail(env, "openPacket: the body is longer than the header's 16-bit length names");
  }
  size_t body_length = length - PACKET_HEADER_BYTES - TAG_BYTES;
  unsigned char nonce[NONCE_BYTES];
  packet_nonce(datagram, nonce);
  if (!evp_open_raw(aead, nonce, datagram, PACKET_HEADER_BYTES, datagram + PACKET_HEADER_BYTES, body_length,
                    datagram + length - TAG_BYTES, datagram + PACKET_HEADER_BYTES)) {
    return int_result(env, -1);
  }
  /* The header was authenticated as it came; only now is its length made the plaintext's. */
  write_body_length(datagram, body_length);
  return int_result(env, (int32_t)(PACKET_HEADER_BYTES + body_length));
}

static napi_value seal_packet(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 7) {
    return fail(env, "sealPacket(handle, nonce, plain, out, hashOut, hashOffset, hashLength) takes seven arguments");
  }
  aead_t *aead = handle_arg(env, argv[0], 1);
  return aead == NULL ? NULL : seal_packet_with(env, aead, argv + 1);
}

static napi_value open_packet(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2) {
    return fail(env, "openPacket(handle, datagram) takes two arguments");
  }
  aead_t *aead = handle_arg(env, argv[0], 0);
  return aead == NULL ? NULL : open_packet_with(env, aead, argv[1]);
}

/*
 * The packet functions bound to one handle (sealPacketFunction, openPacketFunction): the function
 * carries the struct's pointer itself, so a call finds its context without the handle's checks
 * (its type, its tag, its unwrapping: a third of openPacket's time outside OpenSSL, in profiles of a
 * receiver). The struct lives while the handle or any such function does (refs); dispose() frees
 * the context, and a call after it throws.
 */
static aead_t *bound_aead(napi_env env, napi_callback_info info, size_t expected, napi_value *argv,
                          const char *usage) {
  size_t argc = expected;
  void *data = NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, &data) != napi_ok || argc != expected || data == NULL) {
    fail(env, usage);
    return NULL;
  }
  aead_t *aead = data;
  if (aead->ctx == NULL) {
    fail(env, "the AEAD handle was disposed");
    return NULL;
  }
  return aead;
}

static napi_value bound_seal_packet(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  aead_t *aead = bound_aead(env, info, 6, argv,
                            "sealPacket(nonce, plain, out, hashOut, hashOffset, hashLength) takes six arguments");
  return aead == NULL ? NULL : seal_packet_with(env, aead, argv);
}

static napi_value bound_open_packet(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  aead_t *aead = bound_aead(env, info, 1, argv, "openPacket(datagram) takes one argument");
  return aead == NULL ? NULL : open_packet_with(env, aead, argv[0]);
}

/* sealPacketFunction(handle) / openPacketFunction(handle): a packet function bound to the handle's context. */
static napi_value packet_function(napi_env env, napi_callback_info info, int encrypt) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1) {
    return fail(env, "a packet function is made from one handle");
  }
  aead_t *aead = handle_arg(env, argv[0], encrypt);
  if (aead == NULL) {
    return NULL;
  }
  napi_value function;
  if (napi_create_function(env, encrypt ? "sealPacket" : "openPacket", NAPI_AUTO_LENGTH,
                           encrypt ? bound_seal_packet : bound_open_packet, aead, &function) != napi_ok) {
    return fail(env, "could not make the packet function");
  }
  if (napi_add_finalizer(env, function, aead, finalize, NULL, NULL) != napi_ok) {
    return fail(env, "could not make the packet function");
  }
  aead->refs++;
  return function;
}

static napi_value seal_packet_function(napi_env env, napi_callback_info info) {
  return packet_function(env, info, 1);
}

static napi_value open_packet_function(napi_env env, napi_callback_info info) {
  return packet_function(env, info, 0);
}

static napi_value digest(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 4) {
    return fail(env, "digest(input, out, offset, length) takes four arguments");
  }
  unsigned char *input, *out;
  size_t input_length, out_length, offset, length;
  if (!buffer_arg(env, argv[0], &input, &input_length, "the input must be a Buffer") ||
      !buffer_arg(env, argv[1], &out, &out_length, "the output must be a Buffer") ||
      !index_arg(env, argv[2], &offset, "the offset must be a non-negative integer") ||
      !index_arg(env, argv[3], &length, "the length must be a non-negative integer")) {
    return NULL;
  }
  if (length < 1 || length > SHA256_BYTES || offset > out_length || length > out_length - offset) {
    return fail(env, "digest: 1-32 bytes, within the output");
  }
  digest_state_t *state = digest_state(env);
  if (state == NULL) {
    return NULL;
  }
  /* out may be input itself: the hash is taken whole before any of it is written. */
  sha256_into(env, state, input, input_length, out + offset, length);
  return NULL;
}

static napi_value ed25519_verify(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3) {
    return fail(env, "ed25519Verify(signature, message, publicKey) takes three arguments");
  }
  unsigned char *signature, *message, *public_key;
  size_t signature_length, message_length, public_key_length;
  if (!buffer_arg(env, argv[0], &signature, &signature_length, "the signature must be a Buffer") ||
      !buffer_arg(env, argv[1], &message, &message_length, "the message must be a Buffer") ||
      !buffer_arg(env, argv[2], &public_key, &public_key_length, "the public key must be a Buffer")) {
    return NULL;
  }
  if (signature_length != ED25519_SIGNATURE_BYTES || public_key_length != ED25519_PUBLIC_BYTES) {
    return fail(env, "ed25519Verify: a 64-byte signature and a 32-byte public key");
  }
  if (sodium_verify == NULL) {
    return fail(env, "ed25519Verify: libsodium is not loaded");
  }
  /* An empty Buffer may carry no data pointer: libsodium reads none of it then. */
  static const unsigned char empty[1] = {0};
  int valid = sodium_verify(signature, message_length == 0 ? empty : message, message_length, public_key) == 0;
  napi_value result;
  if (napi_get_boolean(env, valid, &result) != napi_ok) {
    return fail(env, "ed25519Verify: cannot return its answer");
  }
  return result;
}

static void signing_key_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  sodium_memzero(data, ED25519_SECRET_BYTES);
  free(data);
}

static napi_value ed25519_signing_key(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2) {
    return fail(env, "ed25519SigningKey(seed, publicOut) takes two arguments");
  }
  unsigned char *seed, *public_out;
  size_t seed_length, public_length;
  if (!buffer_arg(env, argv[0], &seed, &seed_length, "the seed must be a Buffer") ||
      !buffer_arg(env, argv[1], &public_out, &public_length, "the public key output must be a Buffer")) {
    return NULL;
  }
  if (seed_length != ED25519_SEED_BYTES || public_length != ED25519_PUBLIC_BYTES) {
    return fail(env, "ed25519SigningKey: a 32-byte seed and a 32-byte public key output");
  }
  unsigned char *secret = malloc(ED25519_SECRET_BYTES);
  if (secret == NULL) {
    return fail(env, "ed25519SigningKey: out of memory");
  }
  unsigned char public_key[ED25519_PUBLIC_BYTES];
  if (sodium_seed_keypair(public_key, secret, seed) != 0) {
    sodium_memzero(secret, ED25519_SECRET_BYTES);
    free(secret);
    return fail(env, "ed25519SigningKey: libsodium could not make the key");
  }
  napi_value key;
  if (napi_create_object(env, &key) != napi_ok) {
    sodium_memzero(secret, ED25519_SECRET_BYTES);
    free(secret);
    return fail(env, "ed25519SigningKey: cannot make the key object");
  }
  if (napi_wrap(env, key, secret, signing_key_finalize, NULL, NULL) != napi_ok) {
    sodium_memzero(secret, ED25519_SECRET_BYTES);
    free(secret);
    return fail(env, "ed25519SigningKey: cannot make the key object");
  }
  /* Wrapped: from here the finalizer owns the secret. */
  if (napi_type_tag_object(env, key, &signing_key_tag) != napi_ok || napi_object_freeze(env, key) != napi_ok) {
    return fail(env, "ed25519SigningKey: cannot make the key object");
  }
  memcpy(public_out, public_key, ED25519_PUBLIC_BYTES);
  return key;
}

static napi_value ed25519_sign(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 4) {
    return fail(env, "ed25519Sign(key, message, out, offset) takes four arguments");
  }
  napi_valuetype type;
  bool tagged = false;
  void *secret = NULL;
  if (napi_typeof(env, argv[0], &type) != napi_ok || type != napi_object ||
      napi_check_object_type_tag(env, argv[0], &signing_key_tag, &tagged) != napi_ok || !tagged ||
      napi_unwrap(env, argv[0], &secret) != napi_ok || secret == NULL) {
    napi_throw_type_error(env, "GATECAST_ERR_CIPHER", "not an Ed25519 signing key");
    return NULL;
  }
  unsigned char *message, *out;
  size_t message_length, out_length, offset;
  if (!buffer_arg(env, argv[1], &message, &message_length, "the message must be a Buffer") ||
      !buffer_arg(env, argv[2], &out, &out_length, "the output must be a Buffer") ||
      !index_arg(env, argv[3], &offset, "the offset must be a non-negative integer")) {
    return NULL;
  }
  if (offset > out_length || ED25519_SIGNATURE_BYTES > out_length - offset) {
    return fail(env, "ed25519Sign: 64 bytes, within the output");
  }
  unsigned char *target = out + offset;
  if (overlapping(target, ED25519_SIGNATURE_BYTES, message, message_length)) {
    return fail(env, "ed25519Sign: the signature would overlap the message");
  }
  static const unsigned char empty[1] = {0};
  if (sodium_sign(target, NULL, message_length == 0 ? empty : message, message_length, secret) != 0) {
    return fail(env, "ed25519Sign: libsodium could not sign");
  }
  return NULL;
}

/*
 * Looks for libsodium (once per process: pthread_once, as the main thread and workers load the
 * addon each); leaves sodium_verify NULL when it is not there or does not initialise.
 */
static void load_sodium_once(void) {
  static const char *const names[] = {"libsodium.so.23", "libsodium.so.26", "libsodium.so"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    void *library = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (library == NULL) {
      continue;
    }
    int (*init)(void) = (int (*)(void))dlsym(library, "sodium_init");
    sodium_verify_t verify = (sodium_verify_t)dlsym(library, "crypto_sign_verify_detached");
    const char *(*version)(void) = (const char *(*)(void))dlsym(library, "sodium_version_string");
    sodium_sign_t sign = (sodium_sign_t)dlsym(library, "crypto_sign_detached");
    sodium_seed_keypair_t seed_keypair = (sodium_seed_keypair_t)dlsym(library, "crypto_sign_seed_keypair");
    sodium_memzero_t memzero = (sodium_memzero_t)dlsym(library, "sodium_memzero");
    if (init != NULL && verify != NULL && version != NULL && sign != NULL && seed_keypair != NULL &&
        memzero != NULL && init() >= 0) {
      sodium_version = version();
      sodium_sign = sign;
      sodium_seed_keypair = seed_keypair;
      sodium_memzero = memzero;
      sodium_verify = verify;
      return; /* kept loaded for the life of the process */
    }
    dlclose(library);
  }
}

static pthread_once_t sodium_once = PTHREAD_ONCE_INIT;

static void load_sodium(void) {
  pthread_once(&sodium_once, load_sodium_once);
}

static napi_value digest_equals(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 4) {
    return fail(env, "digestEquals(input, expected, offset, length) takes four arguments");
  }
  unsigned char *input, *expected;
  size_t input_length, expected_length, offset, length;
  if (!buffer_arg(env, argv[0], &input, &input_length, "the input must be a Buffer") ||
      !buffer_arg(env, argv[1], &expected, &expected_length, "the expected hash must be a Buffer") ||
      !index_arg(env, argv[2], &offset, "the offset must be a non-negative integer") ||
      !index_arg(env, argv[3], &length, "the length must be a non-negative integer")) {
    return NULL;
  }
  if (length < 1 || length > SHA256_BYTES || offset > expected_length || length > expected_length - offset) {
    return fail(env, "digestEquals: 1-32 bytes, within the expected hash's buffer");
  }
  digest_state_t *state = digest_state(env);
  if (state == NULL) {
    return NULL;
  }
  unsigned char md[SHA256_BYTES];
  if (!sha256_into(env, state, input, input_length, md, length)) {
    return NULL;
  }
  napi_value result;
  if (napi_get_boolean(env, memcmp(md, expected + offset, length) == 0, &result) != napi_ok) {
    return fail(env, "digestEquals: cannot return its answer");
  }
  return result;
}

static int export_function(napi_env env, napi_value exports, const char *name, napi_callback callback) {
  napi_value function;
  return napi_create_function(env, name, NAPI_AUTO_LENGTH, callback, NULL, &function) == napi_ok &&
         napi_set_named_property(env, exports, name, function) == napi_ok;
}

NAPI_MODULE_INIT() {
  pthread_once(&evp_only_once, read_evp_only);
  if (!export_function(env, exports, "create", create) || !export_function(env, exports, "seal", seal) ||
      !export_function(env, exports, "open", open_) || !export_function(env, exports, "dispose", dispose) ||
      !export_function(env, exports, "digest", digest) ||
      !export_function(env, exports, "digestEquals", digest_equals) ||
      !export_function(env, exports, "sealDatagram", seal_datagram) ||
      !export_function(env, exports, "openDatagram", open_datagram) ||
      !export_function(env, exports, "sealPacket", seal_packet) ||
      !export_function(env, exports, "openPacket", open_packet) ||
      !export_function(env, exports, "sealPacketFunction", seal_packet_function) ||
      !export_function(env, exports, "openPacketFunction", open_packet_function) ||
      !export_function(env, exports, "packetPath", packet_path)) {
    return NULL;
  }
  digest_state_t *state = calloc(1, sizeof *state);
  if (state == NULL) {
    return NULL;
  }
  state->sha256 = EVP_MD_fetch(NULL, "SHA2-256", NULL);
  state->ctx = EVP_MD_CTX_new();
  if (state->sha256 == NULL || state->ctx == NULL ||
      napi_set_instance_data(env, state, digest_state_free, NULL) != napi_ok) {
    digest_state_free(env, state, NULL);
    return NULL; /* digest() then says it has no SHA-256; the loader's check refuses the addon */
  }
  load_sodium();
  napi_value sodium;
  if (sodium_verify != NULL && sodium_version != NULL &&
      (!export_function(env, exports, "ed25519Verify", ed25519_verify) ||
       !export_function(env, exports, "ed25519SigningKey", ed25519_signing_key) ||
       !export_function(env, exports, "ed25519Sign", ed25519_sign) ||
       napi_create_string_utf8(env, sodium_version, NAPI_AUTO_LENGTH, &sodium) != napi_ok ||
       napi_set_named_property(env, exports, "sodium", sodium) != napi_ok)) {
    return NULL;
  }
  napi_value version;
  if (napi_create_string_utf8(env, OpenSSL_version(OPENSSL_VERSION), NAPI_AUTO_LENGTH, &version) == napi_ok) {
    napi_set_named_property(env, exports, "openssl", version);
  }
  return exports;
}
