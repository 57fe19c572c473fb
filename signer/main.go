// mailfleet-signer: a DKIM signing milter for mailfleet's Postfix instances, reading the KeyTable
// and SigningTable mailfleet renders for OpenDKIM. It keeps every key parsed, signs RSA through
// OpenSSL, and asks Postfix for one round trip a message: what OpenDKIM cannot (issue 12, README
// "Signing speed").
//
// Build (from signer/, on any OS; the binary is byte-identical wherever it is built, and its
// sha256 is what Pulumi state records):
//
//	GOTOOLCHAIN=go1.26.8 GOAMD64=v1 CGO_ENABLED=0 GOOS=linux GOARCH=amd64 \
//	  go build -trimpath -buildvcs=false -ldflags='-s -w -buildid=' -o mailfleet-signer .
//
// GOTOOLCHAIN and GOAMD64 pin what a differently set up machine would otherwise change (a newer
// local Go, a GOAMD64 in the environment). No C compiler: OpenSSL is opened at run time
// (openssl.go), and the host must have libcrypto.so.3.
package main

import (
	"bufio"
	"flag"
	"log"
	"net"
	"os"
	"strings"

	"github.com/emersion/go-milter"
)

type tableDirs []string

func (d *tableDirs) String() string     { return strings.Join(*d, ",") }
func (d *tableDirs) Set(v string) error { *d = append(*d, v); return nil }

func main() {
	var dirs tableDirs
	flag.Var(&dirs, "tables", "directory with a KeyTable and a SigningTable (repeatable: one per algorithm)")
	socket := flag.String("socket", "", "unix socket to listen on")
	flag.Parse()
	if len(dirs) == 0 || *socket == "" {
		log.Fatal("usage: mailfleet-signer -tables DIR [-tables DIR] -socket PATH")
	}
	if err := loadLibcrypto(); err != nil {
		log.Fatal(err)
	}
	var rules []Rule
	for _, dir := range dirs {
		more, err := loadTables(dir)
		if err != nil {
			log.Fatal(err)
		}
		rules = append(rules, more...)
	}
	os.Remove(*socket)
	listener, err := net.Listen("unix", *socket)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("%d signing rules; listening on %s", len(rules), *socket)
	log.Fatal(newServer(rules).Serve(bufferedListener{listener}))
}

func newServer(rules []Rule) *milter.Server {
	return &milter.Server{
		NewMilter: func() milter.Milter { return &message{rules: rules} },
		Actions:   milter.OptAddHeader | milter.OptChangeHeader,
		Protocol:  Protocol,
	}
}

// bufferedListener reads each connection through a buffer: go-milter reads a packet's length and
// its body with separate reads, two system calls a packet without it.
type bufferedListener struct{ net.Listener }

type bufferedConn struct {
	net.Conn
	reader *bufio.Reader
}

func (c bufferedConn) Read(p []byte) (int, error) { return c.reader.Read(p) }

func (l bufferedListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return bufferedConn{conn, bufio.NewReaderSize(conn, 64<<10)}, nil
}
