// Package java is a local stand-in for github.com/pulumi/pulumi-java/pkg/codegen/java, which the Go module proxy
// refuses: only the schema metadata type pulumi-docker-build's provider fills in (Java SDK generation settings).
package java

// PackageInfo is the "java" language section of a Pulumi package schema (upstream's JSON names and omitempty).
type PackageInfo struct {
	BasePackage                     string            `json:"basePackage"`
	BuildFiles                      string            `json:"buildFiles,omitempty"`
	Dependencies                    map[string]string `json:"dependencies,omitempty"`
	GradleNexusPublishPluginVersion string            `json:"gradleNexusPublishPluginVersion,omitempty"`
	GradleTest                      string            `json:"gradleTest"`
}
