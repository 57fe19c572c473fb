package main

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-milter"
	"github.com/emersion/go-msgauth/dkim"
)

// fixture: tables as mailfleet renders them (an RSA and an Ed25519 directory), the DNS records that
// publish their keys, and the signer serving them on a unix socket.
type fixture struct {
	socket  string
	records map[string]string // selector._domainkey.domain -> TXT
}

func writeKey(t *testing.T, dir, domain, selector string, key any) string {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	block := &pem.Block{Type: "PRIVATE KEY", Bytes: der}
	if rsaKey, ok := key.(*rsa.PrivateKey); ok { // what pulumi-tls writes for RSA
		block = &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}
	}
	path := filepath.Join(dir, domain+"."+selector+".private")
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func start(t *testing.T) *fixture {
	dir := t.TempDir()
	f := &fixture{socket: filepath.Join(dir, "signer.sock"), records: map[string]string{}}
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	edPublic, edKey, _ := ed25519.GenerateKey(rand.Reader)
	rsaPublic, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	f.records["rsa1._domainkey.example.com"] = "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(rsaPublic)
	f.records["ed1._domainkey.example.com"] = "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(edPublic)
	f.records["rsa2._domainkey.example.net"] = f.records["rsa1._domainkey.example.com"]

	tables := map[string]struct{ keyTable, signingTable string }{
		"rsa": {
			"# Managed by mailfleet.\n" +
				"rsa1._domainkey.example.com example.com:rsa1:" + writeKey(t, dir, "example.com", "rsa1", rsaKey) + "\n" +
				"rsa2._domainkey.example.net example.net:rsa2:" + writeKey(t, dir, "example.net", "rsa2", rsaKey) + "\n",
			"*@example.com rsa1._domainkey.example.com\n*@*.example.com rsa1._domainkey.example.com\n" +
				"*@example.net rsa2._domainkey.example.net\n",
		},
		"ed25519": {
			"ed1._domainkey.example.com example.com:ed1:" + writeKey(t, dir, "example.com", "ed1", edKey) + "\n",
			"*@example.com ed1._domainkey.example.com\n",
		},
	}
	var rules []Rule
	for name, table := range tables {
		sub := filepath.Join(dir, name)
		os.Mkdir(sub, 0o700)
		os.WriteFile(filepath.Join(sub, "KeyTable"), []byte(table.keyTable), 0o600)
		os.WriteFile(filepath.Join(sub, "SigningTable"), []byte(table.signingTable), 0o600)
		more, err := loadTables(sub)
		if err != nil {
			t.Fatal(err)
		}
		rules = append(rules, more...)
	}
	listener, err := net.Listen("unix", f.socket)
	if err != nil {
		t.Fatal(err)
	}
	server := newServer(rules)
	go server.Serve(bufferedListener{listener})
	t.Cleanup(func() { server.Close() })
	return f
}

// send passes one message through the signer as Postfix does and returns the message as it would
// leave, with the headers the signer inserted, and the final action. go-milter's server speaks
// protocol version 2 and its client then refuses to offer version 6 steps, so the client offers
// none and follows the steps the signer asks for, as Postfix does (it honours a version 2 milter's
// no-reply steps: scripts/benchmark-signing shows the saving).
func (f *fixture) send(t *testing.T, message string) (string, milter.ActionCode) {
	client := milter.NewClientWithOptions("unix", f.socket, milter.ClientOptions{
		ActionMask: milter.OptAddHeader | milter.OptChangeHeader})
	session, err := client.Session()
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	if !session.ProtocolOption(milter.OptNoHeaderReply) || !session.ProtocolOption(milter.OptNoBodyReply) {
		t.Fatal("the signer did not take the no-reply steps: a round trip per header again")
	}
	head, body, _ := strings.Cut(message, "\r\n\r\n")
	for _, header := range headers(head) {
		name, value, _ := strings.Cut(header, ":")
		if _, err := session.HeaderField(name, strings.TrimPrefix(value, " ")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := session.HeaderEnd(); err != nil {
		t.Fatal(err)
	}
	if _, err := session.BodyChunk([]byte(body)); err != nil {
		t.Fatal(err)
	}
	changes, action, err := session.End()
	if err != nil {
		t.Fatal(err)
	}
	var inserted strings.Builder
	for _, change := range changes {
		if change.Code != milter.ActInsertHeader || change.HeaderName != "DKIM-Signature" {
			t.Fatalf("unexpected change %+v", change)
		}
		inserted.WriteString(change.HeaderName + ": " + strings.ReplaceAll(change.HeaderValue, "\n", "\r\n") + "\r\n")
	}
	return inserted.String() + message, action.Code
}

// headers splits a header block as Postfix hands it to a milter: one header a time, a folded
// header as one value with LF before each continuation line.
func headers(head string) []string {
	var result []string
	for _, line := range strings.Split(head, "\r\n") {
		if strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t") {
			result[len(result)-1] += "\n" + line
		} else {
			result = append(result, line)
		}
	}
	return result
}

func (f *fixture) verify(t *testing.T, signed string) []*dkim.Verification {
	verifications, err := dkim.VerifyWithOptions(strings.NewReader(signed), &dkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			if record, ok := f.records[name]; ok {
				return []string{record}, nil
			}
			return nil, fmt.Errorf("no TXT at %s", name)
		}})
	if err != nil {
		t.Fatal(err)
	}
	return verifications
}

func newsletter(from string) string {
	return "From: News <" + from + ">\r\nTo: someone@example.org\r\nSubject: a subject that is\r\n folded\r\n" +
		"Date: Wed, 25 Nov 2026 18:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\nHello.\r\nBye.\r\n"
}

func TestSignsWithEveryMatchingKeyAndTheSignaturesVerify(t *testing.T) {
	f := start(t)
	signed, action := f.send(t, newsletter("news@example.com"))
	if action != milter.ActAccept {
		t.Fatalf("action %q, want accept", action)
	}
	verifications := f.verify(t, signed)
	for _, v := range verifications {
		if v.Err != nil {
			t.Fatalf("d=%s: %v\n%s", v.Domain, v.Err, signed)
		}
	}
	found := algorithms(signed)
	slices.Sort(found)
	if len(verifications) != 2 || !slices.Equal(found, []string{"ed25519-sha256", "rsa-sha256"}) {
		t.Fatalf("want one RSA and one Ed25519 signature, both verified; got %v", found)
	}
}

func TestSignedHeadersAreOpenDKIMsWithFromOversigned(t *testing.T) {
	f := start(t)
	signed, _ := f.send(t, newsletter("news@example.net"))
	h := strings.Join(f.verify(t, signed)[0].HeaderKeys, ":")
	if h != "From:From:To:Subject:Date:Message-ID" {
		t.Fatalf("h=%s", h)
	}
	// A second From added later, as a forger would, breaks the signature.
	forged := strings.Replace(signed, "From: News", "From: evil@attacker.example\r\nFrom: News", 1)
	if f.verify(t, forged)[0].Err == nil {
		t.Fatal("a From added above the signed one still verifies")
	}
}

func TestSubdomainsSignWithTheParentDomain(t *testing.T) {
	f := start(t)
	signed, _ := f.send(t, newsletter("news@mail.example.com"))
	verifications := f.verify(t, signed)
	if len(verifications) != 1 || verifications[0].Domain != "example.com" || verifications[0].Err != nil {
		t.Fatalf("%+v", *verifications[0])
	}
}

func TestMailOfAnUnknownDomainLeavesUnsigned(t *testing.T) {
	f := start(t)
	for _, from := range []string{"someone@example.org", "someone@notexample.com"} {
		signed, action := f.send(t, newsletter(from))
		if action != milter.ActAccept || strings.Contains(signed, "DKIM-Signature") {
			t.Fatalf("%s: action %q, signed: %v", from, action, strings.Contains(signed, "DKIM-Signature"))
		}
	}
}

func TestBadTablesNameTheFileAndLine(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "KeyTable"), []byte("# ok\nname example.com:sel\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "SigningTable"), nil, 0o600)
	_, err := loadTables(dir)
	if err == nil || !strings.Contains(err.Error(), "KeyTable line 2") {
		t.Fatalf("error %v", err)
	}
	os.WriteFile(filepath.Join(dir, "KeyTable"), nil, 0o600)
	os.WriteFile(filepath.Join(dir, "SigningTable"), []byte("*@example.com missing\n"), 0o600)
	if _, err = loadTables(dir); err == nil || !strings.Contains(err.Error(), `key "missing" is not in the KeyTable`) {
		t.Fatalf("error %v", err)
	}
}

// algorithms reads the a= tag of every DKIM-Signature header, top to bottom.
func algorithms(signed string) []string {
	var found []string
	for _, match := range regexp.MustCompile(`(?m)^DKIM-Signature: a=([a-z0-9-]+);`).FindAllStringSubmatch(signed, -1) {
		found = append(found, match[1])
	}
	return found
}

func TestMain(m *testing.M) {
	if err := loadLibcrypto(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func TestAMissingLibcryptoIsNamed(t *testing.T) {
	err := openLibcrypto("libcrypto.so.0-absent")
	if err == nil || !strings.Contains(err.Error(), "cannot load libcrypto.so.0-absent (OpenSSL 3") {
		t.Fatalf("error %v", err)
	}
}

// BenchmarkRSASign compares one RSA-2048 signature through OpenSSL with one through crypto/rsa:
// the reason the signer loads libcrypto at all.
func BenchmarkRSASign(b *testing.B) {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	digest := sha256.Sum256([]byte("a message"))
	openssl, err := newOpenSSLRSA(x509.MarshalPKCS1PrivateKey(key), &key.PublicKey)
	if err != nil {
		b.Fatal(err)
	}
	for name, signer := range map[string]crypto.Signer{"OpenSSL": openssl, "crypto-rsa": key} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if _, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
