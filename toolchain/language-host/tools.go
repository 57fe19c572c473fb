//go:build tools

// Package tools pins the Python language host this project builds (see scripts/toolchain): the
// package inside the sdk/v3 module, whose newest release that still has it is v3.79.0.
package tools

import (
	_ "github.com/pulumi/pulumi/sdk/v3/python/cmd/pulumi-language-python"
)
