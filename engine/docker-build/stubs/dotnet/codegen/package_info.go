// Package codegen is a local stand-in for github.com/pulumi/pulumi-dotnet/pulumi-language-dotnet/v3/codegen, which
// the Go module proxy refuses: only the schema metadata type pulumi-docker-build's provider fills in.
package codegen

// CSharpPackageInfo is the "csharp" language section of a Pulumi package schema (same JSON names as upstream's).
type CSharpPackageInfo struct {
	RespectSchemaVersion bool              `json:"respectSchemaVersion,omitempty"`
	PackageReferences    map[string]string `json:"packageReferences,omitempty"`
}
