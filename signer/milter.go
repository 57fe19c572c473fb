package main

import (
	"io"
	"log"
	"net/mail"
	"net/textproto"
	"slices"
	"strings"

	"github.com/emersion/go-milter"
	"github.com/emersion/go-msgauth/dkim"
)

// Protocol asks Postfix for headers and body only, and for no reply until the end of the message:
// one round trip a message. OpenDKIM asks for connect, MAIL, RCPT and a reply to every header.
const Protocol = milter.OptNoConnect | milter.OptNoHelo | milter.OptNoMailFrom | milter.OptNoRcptTo |
	milter.OptNoUnknown | milter.OptNoData | milter.OptNoHeaderReply | milter.OptNoEOHReply | milter.OptNoBodyReply

// signedHeaders are signed where present, as OpenDKIM's SignHeaders; From is signed once more
// than present (OversignHeaders), so no From can be added above it.
var signedHeaders = []string{"From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To",
	"MIME-Version", "Content-Type", "List-Unsubscribe", "List-Unsubscribe-Post"}

// message is one message's milter session. Replies are nil where the protocol says none is sent.
type message struct {
	milter.NoOpMilter
	rules   []Rule
	header  strings.Builder
	names   []string
	from    string
	signers []*dkim.Signer
}

func (m *message) Header(name, value string, _ *milter.Modifier) (milter.Response, error) {
	// Postfix sends folded values with bare LF; the signed form must be the CRLF one on the wire.
	// Without SMFIP_HDR_LEADSPC the space after the colon is dropped, which relaxed header
	// canonicalization ignores anyway.
	value = strings.ReplaceAll(strings.ReplaceAll(value, "\r\n", "\n"), "\n", "\r\n")
	m.header.WriteString(name + ": " + value + "\r\n")
	m.names = append(m.names, strings.ToLower(name))
	if strings.EqualFold(name, "From") {
		m.from = value
	}
	return nil, nil
}

func (m *message) Headers(textproto.MIMEHeader, *milter.Modifier) (milter.Response, error) {
	address, err := mail.ParseAddress(m.from)
	if err != nil {
		return nil, nil // no From to sign for: it leaves unsigned, as with OpenDKIM
	}
	for _, rule := range m.rules {
		if !rule.Matches(address.Address) {
			continue
		}
		options := signOptions(rule.Key)
		options.HeaderKeys = m.headerKeys()
		signer, err := dkim.NewSigner(options)
		if err != nil {
			return m.fail(err)
		}
		io.WriteString(signer, m.header.String()+"\r\n")
		m.signers = append(m.signers, signer)
	}
	return nil, nil
}

func (m *message) headerKeys() []string {
	keys := []string{"From"}
	for _, name := range signedHeaders {
		for range countOf(m.names, strings.ToLower(name)) {
			keys = append(keys, name)
		}
	}
	return keys
}

func countOf(names []string, name string) (n int) {
	for _, each := range names {
		if each == name {
			n++
		}
	}
	return n
}

func (m *message) BodyChunk(chunk []byte, _ *milter.Modifier) (milter.Response, error) {
	for _, signer := range m.signers {
		if _, err := signer.Write(chunk); err != nil {
			return m.fail(err)
		}
	}
	return nil, nil
}

// Body is the end of the message: the signatures go on top, then the message is accepted.
func (m *message) Body(modifier *milter.Modifier) (milter.Response, error) {
	for _, signer := range slices.Backward(m.signers) {
		if err := signer.Close(); err != nil {
			return m.fail(err)
		}
		value := strings.TrimSuffix(strings.TrimPrefix(signer.Signature(), "DKIM-Signature: "), "\r\n")
		if err := modifier.InsertHeader(0, "DKIM-Signature", value); err != nil {
			return nil, err
		}
	}
	return milter.RespAccept, nil
}

// Abort ends a message Postfix gave up on (the client sent RSET, a later milter rejected it).
// go-milter keeps this message for the session's next one, which must not inherit its headers
// or signers: it would carry a signature over headers it does not have.
func (m *message) Abort(*milter.Modifier) error {
	for _, signer := range m.signers {
		signer.Close()
	}
	*m = message{rules: m.rules}
	return nil
}

// fail defers the message (Postfix answers 4xx): nothing leaves unsigned, nothing is lost.
func (m *message) fail(err error) (milter.Response, error) {
	log.Printf("temporary failure, message deferred: %v", err)
	for _, signer := range m.signers {
		signer.Close()
	}
	m.signers = nil
	return milter.RespTempFail, nil
}
