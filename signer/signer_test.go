package main

import (
	"bufio"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-milter"
	"github.com/emersion/go-msgauth/dkim"
)

// fixture: tables as mailfleet renders them (an RSA and an Ed25519 directory), the DNS records that
// publish their keys, and the signer serving them on a unix socket.
type fixture struct {
	dir     string
	tables  []string // the -tables directories
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

// writeTables writes the keys and tables of the fixture, the signer not yet started.
func writeTables(t *testing.T) *fixture {
	dir := t.TempDir()
	f := &fixture{dir: dir, socket: filepath.Join(dir, "signer.sock"), records: map[string]string{}}
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	edPublic, edKey, _ := ed25519.GenerateKey(rand.Reader)
	f.records["rsa1._domainkey.example.com"] = rsaRecord(&rsaKey.PublicKey)
	f.records["ed1._domainkey.example.com"] = "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(edPublic)
	f.records["rsa2._domainkey.example.net"] = f.records["rsa1._domainkey.example.com"]

	f.writeTable(t, "rsa", "# Managed by mailfleet.\n"+
		"rsa1._domainkey.example.com example.com:rsa1:"+writeKey(t, dir, "example.com", "rsa1", rsaKey)+"\n"+
		"rsa2._domainkey.example.net example.net:rsa2:"+writeKey(t, dir, "example.net", "rsa2", rsaKey)+"\n",
		"*@example.com rsa1._domainkey.example.com\n*@*.example.com rsa1._domainkey.example.com\n"+
			"*@example.net rsa2._domainkey.example.net\n")
	f.writeTable(t, "ed25519",
		"ed1._domainkey.example.com example.com:ed1:"+writeKey(t, dir, "example.com", "ed1", edKey)+"\n",
		"*@example.com ed1._domainkey.example.com\n")
	f.tables = []string{filepath.Join(dir, "rsa"), filepath.Join(dir, "ed25519")}
	return f
}

func rsaRecord(key *rsa.PublicKey) string {
	der, _ := x509.MarshalPKIXPublicKey(key)
	return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
}

// writeTable writes (or rewrites, as mailfleet does before a reload) one -tables directory.
func (f *fixture) writeTable(t *testing.T, name, keyTable, signingTable string) {
	sub := filepath.Join(f.dir, name)
	os.MkdirAll(sub, 0o700)
	for file, text := range map[string]string{"KeyTable": keyTable, "SigningTable": signingTable} {
		if err := os.WriteFile(filepath.Join(sub, file), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// start serves the fixture's tables from this process.
func start(t *testing.T) *fixture {
	f := writeTables(t)
	rules, err := loadAll(f.tables)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, f.socket, rules)
	return f
}

func serve(t *testing.T, socket string, rules []Rule) {
	listener, err := listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	var current atomic.Pointer[[]Rule]
	current.Store(&rules)
	server := newServer(&current)
	go server.Serve(bufferedListener{listener})
	t.Cleanup(func() { server.Close() })
}

// send passes one message through the signer as Postfix does and returns the message as it would
// leave, with the headers the signer inserted, and the final action. go-milter's server speaks
// protocol version 2 and its client then refuses to offer version 6 steps, so the client offers
// none and follows the steps the signer asks for, as Postfix does (it honours a version 2 milter's
// no-reply steps: scripts/benchmark-signing shows the saving).
func (f *fixture) send(t *testing.T, message string) (string, milter.ActionCode) {
	session := f.session(t)
	sendHead(t, session, message)
	return finish(t, session, message)
}

// session opens a milter session as Postfix does at the start of an SMTP session.
func (f *fixture) session(t *testing.T) *milter.ClientSession {
	client := milter.NewClientWithOptions("unix", f.socket, milter.ClientOptions{
		ActionMask: milter.OptAddHeader | milter.OptChangeHeader})
	session, err := client.Session()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { session.Close() })
	if !session.ProtocolOption(milter.OptNoHeaderReply) || !session.ProtocolOption(milter.OptNoBodyReply) {
		t.Fatal("the signer did not take the no-reply steps: a round trip per header again")
	}
	return session
}

// sendHead sends the message's headers and the end of them.
func sendHead(t *testing.T, session *milter.ClientSession, message string) {
	head, _, _ := strings.Cut(message, "\r\n\r\n")
	for _, header := range headers(head) {
		name, value, _ := strings.Cut(header, ":")
		if _, err := session.HeaderField(name, strings.TrimPrefix(value, " ")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := session.HeaderEnd(); err != nil {
		t.Fatal(err)
	}
}

// finish sends the body and the end of the message, and returns the message as it would leave.
func finish(t *testing.T, session *milter.ClientSession, message string) (string, milter.ActionCode) {
	_, body, _ := strings.Cut(message, "\r\n\r\n")
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
	if os.Getenv("MAILFLEET_SIGNER_AS_MAIN") == "1" { // runSigner: this binary is the signer
		main()
		return
	}
	if err := loadLibcrypto(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func TestCheckPrintsTheRulesAndNamesTheBadLine(t *testing.T) {
	f := writeTables(t)
	var out, errs strings.Builder
	if code := runCheck(&out, &errs, f.tables); code != 0 {
		t.Fatalf("exit %d: %s", code, errs.String())
	}
	want := "*@*.example.com d=example.com s=rsa1 a=rsa-sha256\n" +
		"*@example.com d=example.com s=ed1 a=ed25519-sha256\n" +
		"*@example.com d=example.com s=rsa1 a=rsa-sha256\n" +
		"*@example.net d=example.net s=rsa2 a=rsa-sha256\n"
	if out.String() != want {
		t.Fatalf("-check printed\n%swant\n%s", out.String(), want)
	}

	// A key file that is not a key, on the KeyTable's third line.
	os.WriteFile(filepath.Join(f.dir, "broken.private"), []byte("not a key\n"), 0o600)
	keyTable, _ := os.ReadFile(filepath.Join(f.tables[0], "KeyTable"))
	f.writeTable(t, "rsa", string(keyTable)+"bad._domainkey.example.org example.org:bad:"+
		filepath.Join(f.dir, "broken.private")+"\n", "")
	out.Reset()
	code := runCheck(&out, &errs, f.tables)
	where := filepath.Join(f.tables[0], "KeyTable") + " line 4: " + filepath.Join(f.dir, "broken.private") + ": no PEM block"
	if code != 1 || out.Len() != 0 || !strings.Contains(errs.String(), where) {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 1, nothing, %q", code, out.String(), errs.String(), where)
	}
}

func TestProbePrintsTheSignaturesOfARunningSigner(t *testing.T) {
	f := start(t)
	var out, errs strings.Builder
	if code := runProbe(&out, &errs, f.socket, "postmaster@example.com"); code != 0 {
		t.Fatalf("exit %d: %s", code, errs.String())
	}
	if want := "d=example.com s=ed1 a=ed25519-sha256\nd=example.com s=rsa1 a=rsa-sha256\n"; out.String() != want {
		t.Fatalf("-probe printed\n%swant\n%s", out.String(), want)
	}

	out.Reset()
	if code := runProbe(&out, &errs, f.socket, "postmaster@example.org"); code != 0 || out.Len() != 0 {
		t.Fatalf("unsigned domain: exit %d, printed %q", code, out.String())
	}

	errs.Reset()
	missing := filepath.Join(t.TempDir(), "none.sock")
	if code := runProbe(&out, &errs, missing, "postmaster@example.com"); code != 1 ||
		!strings.Contains(errs.String(), "probe of "+missing+" failed") {
		t.Fatalf("no signer: exit %d, %q", code, errs.String())
	}
}

// failingSigner is a key that cannot sign: the signer defers the message.
type failingSigner struct{ ed25519.PrivateKey }

func (failingSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("the HSM is on fire")
}

func TestProbeFailsOnATempfail(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	socket := filepath.Join(t.TempDir(), "signer.sock")
	serve(t, socket, []Rule{{"*@example.com", &Key{"example.com", "ed1", failingSigner{key}}}})
	var out, errs strings.Builder
	if code := runProbe(&out, &errs, socket, "postmaster@example.com"); code != 1 ||
		!strings.Contains(errs.String(), "the signer answered tempfail") {
		t.Fatalf("exit %d, %q", code, errs.String())
	}
}

func TestAnAbortedMessageLeavesNothingInTheNextOne(t *testing.T) {
	f := start(t)
	session := f.session(t)
	// Postfix aborts after the headers (the client sent RSET, a later milter rejected) and goes on
	// with the next message in the same SMTP session.
	sendHead(t, session, newsletter("news@example.net"))
	if err := session.Abort(); err != nil {
		t.Fatal(err)
	}
	next := newsletter("news@example.com")
	sendHead(t, session, next)
	signed, action := finish(t, session, next)
	verifications := f.verify(t, signed)
	if action != milter.ActAccept || len(verifications) != 2 {
		t.Fatalf("action %q, %d signatures", action, len(verifications))
	}
	for _, v := range verifications {
		if v.Err != nil || v.Domain != "example.com" {
			t.Fatalf("d=%s: %v", v.Domain, v.Err)
		}
	}
}

// signerProcess is this test binary run as mailfleet-signer, for what only a process shows:
// signals, the start-up log.
type signerProcess struct {
	cmd   *exec.Cmd
	lines chan string
}

func runSigner(t *testing.T, args ...string) *signerProcess {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "MAILFLEET_SIGNER_AS_MAIN=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &signerProcess{cmd, make(chan string, 100)}
	go func() {
		scanner := bufio.NewScanner(stderr)
		for scanner.Scan() {
			p.lines <- scanner.Text()
		}
		close(p.lines)
	}()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return p
}

// waitFor returns the next log line that starts with prefix, failing on anything else.
func (p *signerProcess) waitFor(t *testing.T, prefix string) string {
	t.Helper()
	select {
	case line, ok := <-p.lines:
		if !ok || !strings.HasPrefix(line, prefix) {
			t.Fatalf("signer logged %q (exited: %v), want %q...", line, !ok, prefix)
		}
		return line
	case <-time.After(10 * time.Second):
		t.Fatalf("signer did not log %q", prefix)
	}
	return ""
}

func (f *fixture) probe(t *testing.T, from string) string {
	var out, errs strings.Builder
	if code := runProbe(&out, &errs, f.socket, from); code != 0 {
		t.Fatalf("probe: %s", errs.String())
	}
	return out.String()
}

func TestSighupReloadsKeysAndABrokenTableKeepsTheOldRules(t *testing.T) {
	f := writeTables(t)
	p := runSigner(t, "-tables", f.tables[0], "-tables", f.tables[1], "-socket", f.socket)
	p.waitFor(t, "signing RSA with OpenSSL 3")
	p.waitFor(t, "4 signing rules; listening on "+f.socket)

	// A message under way when the reload comes is signed with the key it started with.
	underway := f.session(t)
	message := newsletter("news@example.net")
	sendHead(t, underway, message)

	// The key rollover mailfleet does: a new selector for example.net.
	newKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	f.records["rsa2026._domainkey.example.net"] = rsaRecord(&newKey.PublicKey)
	keyTable := "rsa1._domainkey.example.com example.com:rsa1:" + filepath.Join(f.dir, "example.com.rsa1.private") + "\n" +
		"rsa2026._domainkey.example.net example.net:rsa2026:" + writeKey(t, f.dir, "example.net", "rsa2026", newKey) + "\n"
	f.writeTable(t, "rsa", keyTable, "*@example.com rsa1._domainkey.example.com\n"+
		"*@*.example.com rsa1._domainkey.example.com\n*@example.net rsa2026._domainkey.example.net\n")
	syscall.Kill(p.cmd.Process.Pid, syscall.SIGHUP)
	p.waitFor(t, "reloaded: 4 signing rules")

	signed, action := finish(t, underway, message)
	if v := f.verify(t, signed); action != milter.ActAccept || len(v) != 1 || v[0].Err != nil ||
		!strings.Contains(signed, "s=rsa2;") {
		t.Fatalf("the message under way: action %q, %+v\n%s", action, v, signed)
	}
	if got := f.probe(t, "news@example.net"); got != "d=example.net s=rsa2026 a=rsa-sha256\n" {
		t.Fatalf("after the reload the probe printed %q", got)
	}
	if v := f.verify(t, first(f.send(t, newsletter("news@example.net")))); len(v) != 1 || v[0].Err != nil {
		t.Fatalf("%+v", v)
	}

	// A broken table: the signer says where, and goes on signing with what it had.
	f.writeTable(t, "rsa", keyTable+"broken example.net:rsa2027\n", "*@example.net rsa2026._domainkey.example.net\n")
	syscall.Kill(p.cmd.Process.Pid, syscall.SIGHUP)
	p.waitFor(t, "reload failed, still signing with the previous 4 rules: "+
		filepath.Join(f.tables[0], "KeyTable")+" line 3: want `name domain:selector:keyfile`")
	if got := f.probe(t, "news@example.com"); got != "d=example.com s=ed1 a=ed25519-sha256\nd=example.com s=rsa1 a=rsa-sha256\n" {
		t.Fatalf("after the failed reload the probe printed %q", got)
	}
}

func first[A, B any](a A, _ B) A { return a }

func TestStartupRemovesAStaleSocketButNeverAFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "signer.sock")

	os.WriteFile(path, []byte("someone's file\n"), 0o600)
	if _, err := listen(path); err == nil || !strings.Contains(err.Error(), "exists and is not a socket") {
		t.Fatalf("error %v", err)
	}
	if data, _ := os.ReadFile(path); string(data) != "someone's file\n" {
		t.Fatal("the file was touched")
	}
	os.Remove(path)

	// The socket a killed signer leaves behind.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	// systemd's UMask=0007: the socket must come out rw for the group (postfix), nothing for others.
	defer syscall.Umask(syscall.Umask(0o007))
	listener, err := listen(path)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	defer listener.Close()
	if info, _ := os.Stat(path); info.Mode().Perm() != 0o770 {
		t.Fatalf("socket mode %v, want 0770 from the umask", info.Mode().Perm())
	}

	// A live one is another signer's: not taken from under it.
	if _, err := listen(path); err == nil || !strings.Contains(err.Error(), "another signer is listening") {
		t.Fatalf("error %v", err)
	}
}

// flakyListener fails its first Accept as a process out of file descriptors does.
type flakyListener struct {
	net.Listener
	failed bool
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if !l.failed {
		l.failed = true
		return nil, syscall.EMFILE
	}
	return l.Listener.Accept()
}

func TestTheSignerOutlivesAFailedAccept(t *testing.T) {
	f := writeTables(t)
	listener, err := listen(f.socket)
	if err != nil {
		t.Fatal(err)
	}
	var rules atomic.Pointer[[]Rule]
	loaded, _ := loadAll(f.tables)
	rules.Store(&loaded)
	server := newServer(&rules)
	go server.Serve(bufferedListener{&flakyListener{Listener: listener}})
	t.Cleanup(func() { server.Close() })
	if got := f.probe(t, "news@example.net"); got != "d=example.net s=rsa2 a=rsa-sha256\n" {
		t.Fatalf("probe printed %q", got)
	}
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
