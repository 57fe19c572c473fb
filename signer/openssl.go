package main

// RSA signing through the system's libcrypto (Debian's OpenSSL 3, with its security updates): the
// key is parsed once, so OpenSSL keeps its Montgomery and blinding values between signatures. The
// library is opened at run time through purego, not linked with cgo: the binary then builds
// without a C toolchain, byte for byte the same on any machine (the build command is in main.go).
// There is deliberately no crypto/rsa fallback: Go's RSA is four times slower, and a host that
// silently signs four times slower is worse than one that refuses to start.

import (
	"crypto"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"runtime"

	"github.com/ebitengine/purego"
)

// libcryptoName is OpenSSL 3's soname: Debian 12's libssl3 and Debian 13's libssl3t64 ship it.
const libcryptoName = "libcrypto.so.3"

const rsaPKCS1Padding = 1 // RSA_PKCS1_PADDING

// libcrypto holds the OpenSSL 3 functions the signer calls; every one is a real exported function
// in OpenSSL 3 (nm -D libcrypto.so.3), none a macro. Pointers to OpenSSL objects are uintptrs:
// Go never looks inside them.
var libcrypto struct {
	d2iAutoPrivateKey        func(out uintptr, der **byte, length int) uintptr
	evpPKEYFree              func(key uintptr)
	evpPKEYCTXNew            func(key, engine uintptr) uintptr
	evpPKEYCTXFree           func(ctx uintptr)
	evpPKEYSignInit          func(ctx uintptr) int32
	evpPKEYCTXSetRSAPadding  func(ctx uintptr, padding int32) int32
	evpPKEYCTXSetSignatureMD func(ctx, md uintptr) int32
	evpSHA256                func() uintptr
	evpPKEYSign              func(ctx uintptr, sig *byte, siglen *uintptr, tbs *byte, tbslen uintptr) int32
	errGetError              func() uint64
	errErrorStringN          func(code uint64, buf *byte, length uintptr)
	openSSLVersion           func(kind int32) string
}

// loadLibcrypto opens libcrypto.so.3 and resolves every function, so that a missing library or
// symbol stops the signer at start, never at the first message.
func loadLibcrypto() error { return openLibcrypto(libcryptoName) }

func openLibcrypto(soname string) error {
	lib, err := purego.Dlopen(soname, purego.RTLD_NOW|purego.RTLD_LOCAL)
	if err != nil {
		return fmt.Errorf("cannot load %s (OpenSSL 3: Debian's libssl3 or libssl3t64), which signs RSA: %w",
			soname, err)
	}
	for name, fn := range map[string]any{
		"d2i_AutoPrivateKey":            &libcrypto.d2iAutoPrivateKey,
		"EVP_PKEY_free":                 &libcrypto.evpPKEYFree,
		"EVP_PKEY_CTX_new":              &libcrypto.evpPKEYCTXNew,
		"EVP_PKEY_CTX_free":             &libcrypto.evpPKEYCTXFree,
		"EVP_PKEY_sign_init":            &libcrypto.evpPKEYSignInit,
		"EVP_PKEY_CTX_set_rsa_padding":  &libcrypto.evpPKEYCTXSetRSAPadding,
		"EVP_PKEY_CTX_set_signature_md": &libcrypto.evpPKEYCTXSetSignatureMD,
		"EVP_sha256":                    &libcrypto.evpSHA256,
		"EVP_PKEY_sign":                 &libcrypto.evpPKEYSign,
		"ERR_get_error":                 &libcrypto.errGetError,
		"ERR_error_string_n":            &libcrypto.errErrorStringN,
		"OpenSSL_version":               &libcrypto.openSSLVersion,
	} {
		symbol, err := purego.Dlsym(lib, name)
		if err != nil {
			return fmt.Errorf("%s has no %s: not OpenSSL 3? %w", soname, name, err)
		}
		purego.RegisterFunc(fn, symbol)
	}
	return nil
}

// opensslVersion is the loaded library's own version line, e.g. "OpenSSL 3.0.17 1 Jul 2025".
func opensslVersion() string { return libcrypto.openSSLVersion(0) } // OPENSSL_VERSION

// opensslError drains OpenSSL's per-thread error queue into one message. The queue must be emptied
// so that a stale error is not reported with the next failure on this thread.
func opensslError(what string) error {
	message := what
	for code := libcrypto.errGetError(); code != 0; code = libcrypto.errGetError() {
		buf := make([]byte, 256)
		libcrypto.errErrorStringN(code, &buf[0], uintptr(len(buf)))
		message += ": " + string(buf[:clen(buf)])
	}
	return errors.New(message)
}

func clen(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return len(b)
}

type opensslRSA struct {
	key uintptr // EVP_PKEY *
	pub *rsa.PublicKey
}

func newOpenSSLRSA(der []byte, pub *rsa.PublicKey) (*opensslRSA, error) {
	if libcrypto.d2iAutoPrivateKey == nil {
		return nil, errors.New(libcryptoName + " is not loaded")
	}
	runtime.LockOSThread() // OpenSSL's error queue is per thread: read it on the failing one
	defer runtime.UnlockOSThread()
	// d2i advances the pointer it is given; pinned, neither the pointer nor the DER may move.
	var pinner runtime.Pinner
	defer pinner.Unpin()
	p := &der[0]
	pinner.Pin(p)
	pp := &p
	pinner.Pin(pp)
	key := libcrypto.d2iAutoPrivateKey(0, pp, len(der))
	if key == 0 {
		return nil, opensslError("OpenSSL could not parse the RSA key")
	}
	k := &opensslRSA{key, pub}
	// A reload drops the old keys while messages may still be signing with them: OpenSSL's copy
	// is freed only once no rule and no message holds the key any more.
	runtime.AddCleanup(k, libcrypto.evpPKEYFree, key)
	return k, nil
}

func (k *opensslRSA) Public() crypto.PublicKey { return k.pub }

func (k *opensslRSA) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts.HashFunc() != crypto.SHA256 || len(digest) != crypto.SHA256.Size() {
		return nil, errors.New("only rsa-sha256")
	}
	// A context per signature: contexts are not shared between threads, the key is (read only).
	runtime.LockOSThread() // OpenSSL's error queue is per thread: read it on the failing one
	defer runtime.UnlockOSThread()
	ctx := libcrypto.evpPKEYCTXNew(k.key, 0)
	if ctx == 0 {
		return nil, opensslError("OpenSSL could not make a signing context")
	}
	defer libcrypto.evpPKEYCTXFree(ctx)
	sig := make([]byte, k.pub.Size())
	n := uintptr(len(sig))
	ok := libcrypto.evpPKEYSignInit(ctx) > 0 &&
		libcrypto.evpPKEYCTXSetRSAPadding(ctx, rsaPKCS1Padding) > 0 &&
		libcrypto.evpPKEYCTXSetSignatureMD(ctx, libcrypto.evpSHA256()) > 0 &&
		libcrypto.evpPKEYSign(ctx, &sig[0], &n, &digest[0], uintptr(len(digest))) > 0
	runtime.KeepAlive(k) // the cleanup must not free the EVP_PKEY while it signs
	if !ok {
		return nil, opensslError("OpenSSL could not sign")
	}
	return sig[:n], nil
}
