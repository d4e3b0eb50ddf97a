// Command pulumi-resource-kubernetes serves the pulumi-kubernetes provider.
//
// The upstream main package embeds generated files that are not part of the module zip, so mlinfra builds it from
// this folder: scripts/engine.sh writes schema-embed.json (the provider's schema.json with its version set) and
// terraform-mapping-embed.json next to this file before `go build` (both are git-ignored).
package main

import (
	_ "embed"

	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/provider"
	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version"
)

//go:embed schema-embed.json
var pulumiSchema []byte

//go:embed terraform-mapping-embed.json
var terraformMapping []byte

func main() {
	provider.Serve("kubernetes", version.Version, pulumiSchema, terraformMapping)
}
