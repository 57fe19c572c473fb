package main

// RSA signing through the system's libcrypto (Debian's OpenSSL 3, with its security updates): the
// key is parsed once, so OpenSSL keeps its Montgomery and blinding values between signatures.

/*
#cgo LDFLAGS: -lcrypto
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

static EVP_PKEY *load_der(const unsigned char *der, long len) {
	return d2i_AutoPrivateKey(NULL, &der, len);
}

static int sign_digest(EVP_PKEY *key, const unsigned char *digest, size_t n, unsigned char *sig, size_t *siglen) {
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(key, NULL);
	int ok = ctx != NULL && EVP_PKEY_sign_init(ctx) > 0
		&& EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) > 0
		&& EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) > 0
		&& EVP_PKEY_sign(ctx, sig, siglen, digest, n) > 0;
	EVP_PKEY_CTX_free(ctx);
	return ok;
}
*/
import "C"

import (
	"crypto"
	"crypto/rsa"
	"errors"
	"io"
	"unsafe"
)

type opensslRSA struct {
	key *C.EVP_PKEY
	pub *rsa.PublicKey
}

func newOpenSSLRSA(der []byte, pub *rsa.PublicKey) (*opensslRSA, error) {
	key := C.load_der((*C.uchar)(unsafe.Pointer(&der[0])), C.long(len(der)))
	if key == nil {
		return nil, errors.New("OpenSSL could not parse the RSA key")
	}
	return &opensslRSA{key, pub}, nil
}

func (k *opensslRSA) Public() crypto.PublicKey { return k.pub }

func (k *opensslRSA) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts.HashFunc() != crypto.SHA256 {
		return nil, errors.New("only rsa-sha256")
	}
	sig := make([]byte, k.pub.Size())
	n := C.size_t(len(sig))
	if C.sign_digest(k.key, (*C.uchar)(unsafe.Pointer(&digest[0])), C.size_t(len(digest)),
		(*C.uchar)(unsafe.Pointer(&sig[0])), &n) == 0 {
		return nil, errors.New("OpenSSL could not sign")
	}
	return sig[:n], nil
}
