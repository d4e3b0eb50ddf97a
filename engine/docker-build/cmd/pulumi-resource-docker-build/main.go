// The pulumi-docker-build provider (upstream's main, unchanged).
package main

import (
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/cmdutil"

	"github.com/pulumi/pulumi-docker-build/provider"
)

func main() {
	if err := provider.Serve(); err != nil {
		cmdutil.ExitError(err.Error())
	}
}
