module mailfleet/signer

go 1.26.8

require (
	github.com/ebitengine/purego v0.11.3
	github.com/emersion/go-milter v0.5.0
	github.com/emersion/go-msgauth v0.7.0
)

require (
	github.com/emersion/go-message v0.18.2 // indirect
	golang.org/x/crypto v0.31.0 // indirect
)
