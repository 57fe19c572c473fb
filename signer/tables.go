package main

import (
	"bufio"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/emersion/go-msgauth/dkim"
)

// Key is one signing key: the d= and s= it signs with.
type Key struct {
	Domain, Selector string
	Signer           crypto.Signer
}

// Rule is one SigningTable line: mail whose From domain matches Pattern is signed with Key.
type Rule struct {
	Pattern string // "*@example.com" or "*@*.example.com", as mailfleet renders them
	Key     *Key
}

// loadAll reads every -tables directory, one per algorithm, at start, on SIGHUP and for -check:
// all three parse alike, so what -check accepts is what a reload will sign with.
func loadAll(dirs []string) ([]Rule, error) {
	var rules []Rule
	for _, dir := range dirs {
		more, err := loadTables(dir)
		if err != nil {
			return nil, err
		}
		rules = append(rules, more...)
	}
	return rules, nil
}

// Algorithm is the a= tag this key signs with.
func (k *Key) Algorithm() string {
	if _, ok := k.Signer.(ed25519.PrivateKey); ok {
		return "ed25519-sha256"
	}
	return "rsa-sha256"
}

// describe is one sorted line per rule, as -check prints them: a deployment step compares them.
func describe(rules []Rule) []string {
	var lines []string
	for _, rule := range rules {
		lines = append(lines, fmt.Sprintf("%s d=%s s=%s a=%s",
			rule.Pattern, rule.Key.Domain, rule.Key.Selector, rule.Key.Algorithm()))
	}
	slices.Sort(lines)
	return lines
}

// loadTables reads the OpenDKIM KeyTable and SigningTable in dir, the very files mailfleet renders
// for OpenDKIM, and parses every private key once: parsing per message is what OpenDKIM pays for.
func loadTables(dir string) ([]Rule, error) {
	keys := map[string]*Key{}
	err := eachLine(filepath.Join(dir, "KeyTable"), func(where string, fields []string) error {
		parts := strings.Split(fields[len(fields)-1], ":")
		if len(fields) != 2 || len(parts) != 3 {
			return fmt.Errorf("%s: want `name domain:selector:keyfile`", where)
		}
		signer, err := loadKey(parts[2])
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		keys[fields[0]] = &Key{Domain: strings.ToLower(parts[0]), Selector: parts[1], Signer: signer}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var rules []Rule
	err = eachLine(filepath.Join(dir, "SigningTable"), func(where string, fields []string) error {
		if len(fields) != 2 || !strings.HasPrefix(fields[0], "*@") {
			return fmt.Errorf("%s: want `*@domain keyname` or `*@*.domain keyname`", where)
		}
		key, ok := keys[fields[1]]
		if !ok {
			return fmt.Errorf("%s: key %q is not in the KeyTable", where, fields[1])
		}
		rules = append(rules, Rule{Pattern: strings.ToLower(fields[0]), Key: key})
		return nil
	})
	return rules, err
}

// Matches tells whether mail from address (local@domain) is signed by this rule.
func (r Rule) Matches(address string) bool {
	domain := strings.ToLower(address[strings.LastIndex(address, "@")+1:])
	if parent, ok := strings.CutPrefix(r.Pattern, "*@*."); ok {
		return strings.HasSuffix(domain, "."+parent)
	}
	return domain == strings.TrimPrefix(r.Pattern, "*@")
}

func eachLine(path string, do func(where string, fields []string) error) error {
	file, err := os.Open(path)
	if err != nil {
		return err
	}
	defer file.Close()
	scanner := bufio.NewScanner(file)
	for n := 1; scanner.Scan(); n++ {
		line := strings.TrimSpace(scanner.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := do(fmt.Sprintf("%s line %d", path, n), strings.Fields(line)); err != nil {
			return err
		}
	}
	return scanner.Err()
}

func loadKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		if key, err = x509.ParsePKCS1PrivateKey(block.Bytes); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	switch key := key.(type) {
	case *rsa.PrivateKey:
		// Go's RSA-2048 costs ~1.0 ms a signature here, OpenSSL's ~0.27 ms (BenchmarkRSASign).
		return newOpenSSLRSA(block.Bytes, &key.PublicKey)
	case ed25519.PrivateKey:
		return key, nil
	}
	return nil, fmt.Errorf("%s: neither an RSA nor an Ed25519 key", path)
}

// signOptions are OpenDKIM's as mailfleet configures it (templates/etc/opendkim.conf.j2):
// relaxed/simple, the same headers, From oversigned.
func signOptions(key *Key) *dkim.SignOptions {
	return &dkim.SignOptions{
		Domain: key.Domain, Selector: key.Selector, Signer: key.Signer,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.CanonicalizationSimple,
		HeaderKeys: []string{"From", "From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To",
			"MIME-Version", "Content-Type", "List-Unsubscribe", "List-Unsubscribe-Post"},
	}
}
