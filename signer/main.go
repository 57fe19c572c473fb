// mailfleet-signer: a DKIM signing milter for mailfleet's Postfix instances, reading the KeyTable
// and SigningTable mailfleet renders for OpenDKIM. It keeps every key parsed, signs RSA through
// OpenSSL, and asks Postfix for one round trip a message: what OpenDKIM cannot (docs/benchmarks.md,
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
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-milter"
)

type tableDirs []string

func (d *tableDirs) String() string     { return strings.Join(*d, ",") }
func (d *tableDirs) Set(v string) error { *d = append(*d, v); return nil }

const usage = `usage: mailfleet-signer -tables DIR [-tables DIR] -socket PATH    serve; SIGHUP reloads
       mailfleet-signer -check -tables DIR [-tables DIR]             validate, print the rules
       mailfleet-signer -probe -socket PATH -from ADDRESS            sign one message, print d= s= a=`

func main() {
	// SIGHUP would end the process until it is caught: catch it first, so that a reload sent
	// while the signer is still starting is a reload, not a crash.
	hangup := make(chan os.Signal, 1)
	signal.Notify(hangup, syscall.SIGHUP)
	log.SetFlags(0) // journald stamps every line itself

	var dirs tableDirs
	flag.Var(&dirs, "tables", "directory with a KeyTable and a SigningTable (repeatable: one per algorithm)")
	socket := flag.String("socket", "", "unix socket to listen on (or, with -probe, to connect to)")
	check := flag.Bool("check", false, "parse the tables and keys as serving would, print one line per rule, exit")
	probe := flag.Bool("probe", false, "send one message from -from to the signer at -socket, print its signatures")
	from := flag.String("from", "", "the -probe message's sender")
	flag.Usage = func() { fmt.Fprintln(os.Stderr, usage); flag.PrintDefaults() }
	flag.Parse()
	switch {
	case flag.NArg() > 0:
		log.Fatal(usage)
	case *probe && *socket != "" && *from != "":
		os.Exit(runProbe(os.Stdout, os.Stderr, *socket, *from))
	case *check && len(dirs) > 0:
		os.Exit(runCheck(os.Stdout, os.Stderr, dirs))
	case *probe || *check || len(dirs) == 0 || *socket == "":
		log.Fatal(usage)
	}

	if err := loadLibcrypto(); err != nil {
		log.Fatal(err)
	}
	loaded, err := loadAll(dirs)
	if err != nil {
		log.Fatal(err)
	}
	var rules atomic.Pointer[[]Rule]
	rules.Store(&loaded)
	go func() {
		for range hangup {
			reload(dirs, &rules)
		}
	}()
	listener, err := listen(*socket)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("signing RSA with %s (%s)", opensslVersion(), libcryptoName)
	log.Printf("%d signing rules; listening on %s", len(loaded), *socket)
	log.Fatal(newServer(&rules).Serve(bufferedListener{listener}))
}

// runCheck is -check: the validation step before a reload. It loads exactly what serving loads,
// RSA keys into OpenSSL included, so a table that passes does not fail the reload that follows,
// as long as it runs as the signer's user (opendkim): a reload reads the keys with its rights.
func runCheck(stdout, stderr io.Writer, dirs []string) int {
	err := loadLibcrypto()
	var rules []Rule
	if err == nil {
		rules, err = loadAll(dirs)
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	for _, line := range describe(rules) {
		fmt.Fprintln(stdout, line)
	}
	return 0
}

// reload is SIGHUP: the new rules replace the old ones whole, or not at all. Messages already in
// a session keep the rules they started with (newServer), so no session is dropped or half-signed.
func reload(dirs []string, rules *atomic.Pointer[[]Rule]) {
	fresh, err := loadAll(dirs)
	if err != nil {
		log.Printf("reload failed, still signing with the previous %d rules: %v", len(*rules.Load()), err)
		return
	}
	rules.Store(&fresh)
	log.Printf("reloaded: %d signing rules", len(fresh))
}

// listen makes the milter socket. A socket left by a signer that died is removed; anything else at
// the path is refused, never deleted (a mistyped -socket must not cost a file). The socket gets
// the process umask (systemd's UMask=0007) and the group of its setgid directory (postfix):
// nothing here chmods it.
func listen(path string) (net.Listener, error) {
	info, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, err
	case info.Mode().Type() != fs.ModeSocket:
		return nil, fmt.Errorf("%s exists and is not a socket: not removing it", path)
	default:
		if conn, err := net.Dial("unix", path); err == nil {
			conn.Close()
			return nil, fmt.Errorf("%s: another signer is listening on it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	return net.Listen("unix", path)
}

// newServer serves the rules in force when each message's session begins: go-milter makes a
// message at connect and after each finished one.
func newServer(rules *atomic.Pointer[[]Rule]) *milter.Server {
	return &milter.Server{
		NewMilter: func() milter.Milter { return &message{rules: *rules.Load()} },
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

// Accept waits out a failure such as running out of file descriptors: go-milter's Serve returns on
// any Accept error, which would end the signer and every session in progress with it.
func (l bufferedListener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if errors.Is(err, net.ErrClosed) {
			return nil, err
		}
		if err != nil {
			log.Printf("accept: %v; retrying in a second", err)
			time.Sleep(time.Second)
			continue
		}
		return bufferedConn{conn, bufio.NewReaderSize(conn, 64<<10)}, nil
	}
}
