#ifndef SNAP_CCRYPTO_SHIM_H
#define SNAP_CCRYPTO_SHIM_H
// OpenSSL 3 libcrypto: the EVP digest interface (SHA-256 with the CPU's SHA extensions) and RAND.
#include <openssl/evp.h>
#include <openssl/rand.h>
#endif
