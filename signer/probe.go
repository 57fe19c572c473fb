package main

// -probe: the health check after a start or a reload. It talks to the running signer as Postfix
// does, so a signer that loads but cannot sign (a key OpenSSL refuses, a protocol mismatch) fails
// it, and it prints what was signed so the deployment step can compare the selectors.

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-milter"
)

func runProbe(stdout, stderr io.Writer, socket, from string) int {
	signatures, err := probe(socket, from)
	if err != nil {
		fmt.Fprintf(stderr, "probe of %s failed: %v\n", socket, err)
		return 1
	}
	if len(signatures) == 0 {
		fmt.Fprintf(stderr, "the signer at %s added no DKIM-Signature for %s\n", socket, from)
	}
	for _, line := range signatures {
		fmt.Fprintln(stdout, line)
	}
	return 0
}

// probe sends one message from the address and returns `d= s= a=` of every DKIM-Signature the
// signer asked to insert, sorted.
func probe(socket, from string) ([]string, error) {
	client := milter.NewClientWithOptions("unix", socket, milter.ClientOptions{
		ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
		// What Postfix offers a milter: it may add and change headers, and skip any step.
		ActionMask: milter.OptAddHeader | milter.OptChangeHeader})
	session, err := client.Session()
	if err != nil {
		return nil, err
	}
	defer session.Close()
	domain := from[strings.LastIndex(from, "@")+1:]
	now := time.Now()
	// The steps Postfix takes; the client skips those the signer declined at negotiation.
	steps := []func() (*milter.Action, error){
		func() (*milter.Action, error) { return session.Conn("localhost", milter.FamilyInet, 25, "127.0.0.1") },
		func() (*milter.Action, error) { return session.Helo("localhost") },
		func() (*milter.Action, error) { return session.Mail("<"+from+">", nil) },
		func() (*milter.Action, error) { return session.Rcpt("<"+from+">", nil) },
	}
	for _, header := range [][2]string{
		{"From", "mailfleet-signer probe <" + from + ">"},
		{"To", from},
		{"Subject", "mailfleet-signer probe"},
		{"Date", now.Format(time.RFC1123Z)},
		{"Message-ID", fmt.Sprintf("<probe.%d@%s>", now.UnixNano(), domain)},
		{"MIME-Version", "1.0"},
		{"Content-Type", "text/plain; charset=utf-8"},
	} {
		steps = append(steps, func() (*milter.Action, error) { return session.HeaderField(header[0], header[1]) })
	}
	steps = append(steps, session.HeaderEnd,
		func() (*milter.Action, error) { return session.BodyChunk([]byte("A signing probe.\r\n")) })
	for _, step := range steps {
		action, err := step()
		if err != nil {
			return nil, err
		}
		if action.Code != milter.ActContinue {
			return nil, fmt.Errorf("the signer answered %s before the end of the message", describeAction(action))
		}
	}
	changes, action, err := session.End()
	if err != nil {
		return nil, err
	}
	if action.Code != milter.ActAccept && action.Code != milter.ActContinue {
		return nil, fmt.Errorf("the signer answered %s", describeAction(action))
	}
	var signatures []string
	for _, change := range changes {
		if change.HeaderName != "DKIM-Signature" {
			continue
		}
		tags := dkimTags(change.HeaderValue)
		if tags["d"] == "" || tags["s"] == "" || tags["a"] == "" {
			return nil, errors.New("a DKIM-Signature without d=, s= or a=: " + change.HeaderValue)
		}
		signatures = append(signatures, fmt.Sprintf("d=%s s=%s a=%s", tags["d"], tags["s"], tags["a"]))
	}
	slices.Sort(signatures)
	return signatures, nil
}

// dkimTags reads a DKIM-Signature's tag=value list; folding whitespace is not part of a value.
func dkimTags(value string) map[string]string {
	tags := map[string]string{}
	for _, tag := range strings.Split(value, ";") {
		name, value, _ := strings.Cut(tag, "=")
		tags[strings.TrimSpace(name)] = strings.Join(strings.Fields(value), "")
	}
	return tags
}

func describeAction(action *milter.Action) string {
	switch action.Code {
	case milter.ActTempFail:
		return "tempfail"
	case milter.ActReject:
		return "reject"
	case milter.ActDiscard:
		return "discard"
	case milter.ActAccept:
		return "accept"
	case milter.ActReplyCode:
		return fmt.Sprintf("%d %s", action.SMTPCode, action.SMTPText)
	}
	return fmt.Sprintf("%q", rune(action.Code))
}
