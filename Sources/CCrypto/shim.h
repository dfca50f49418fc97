#ifndef SNAP_CCRYPTO_SHIM_H
#define SNAP_CCRYPTO_SHIM_H
// OpenSSL 3 libcrypto: the EVP digest interface (SHA-256 with the CPU's SHA extensions).
#include <openssl/crypto.h>
#include <openssl/evp.h>

// Sets libcrypto up without its exit handler. By default OpenSSL frees its global locks from
// atexit(); a thread still hashing, or only ending (OpenSSL's thread-exit cleanup takes a global
// lock), then locks freed memory and the process dies of SIGSEGV after its work is done. Only the
// first initialization of a process decides, so this must come before any other OpenSSL call.
static inline int snap_crypto_init_without_exit_handler(void) {
    return OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, NULL);
}
#endif
