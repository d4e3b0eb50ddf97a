// Command pulumi-language-python is mlinfra's own Python language host for the Pulumi engine.
//
// Pulumi's language host lives in a Go module that the module proxy this project builds from does not serve, so
// mlinfra ships this small, self-contained host instead (docs/engine.md). It speaks the engine's LanguageRuntime gRPC
// protocol and runs Python programs through the `pulumi-language-python-exec` script that ships in the Pulumi SDK
// module (copied beside this binary by `make setup`), exactly as the upstream host does:
//
//   - Run: spawns `<python> -u pulumi-language-python-exec --monitor ... PROGRAM` with PULUMI_CONFIG and
//     PULUMI_CONFIG_SECRET_KEYS in the environment; exit code 32 means "error already shown" (bail).
//   - GetRequiredPackages: lists the `pulumi-plugin.json` files of installed Python distributions, so the engine
//     can say up front which resource plugin is missing.
//   - RunPlugin: runs Python plugins (policy packs) and streams their output.
//
// The Python interpreter is, in order: the `virtualenv` runtime option of Pulumi.yaml, $PULUMI_PYTHON_CMD, `python3`.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	"github.com/pulumi/pulumi/sdk/v3/go/common/version"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// exitShownToUser is the exec script's code for "the error was already reported to the user".
const exitShownToUser = 32

func main() {
	flags := flag.NewFlagSet("pulumi-language-python", flag.ContinueOnError)
	tracing := flags.String("tracing", "", "tracing endpoint (passed through to the program)")
	_ = flags.String("root", "", "project root (unused)")
	_ = flags.Bool("logtostderr", false, "unused")
	_ = flags.Int("v", 0, "unused")
	if err := flags.Parse(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	engine := ""
	if args := flags.Args(); len(args) > 0 {
		engine = args[len(args)-1]
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-language-python: cannot locate itself: %v\n", err)
		os.Exit(1)
	}
	execScript := filepath.Join(filepath.Dir(self), "pulumi-language-python-exec")
	if _, err := os.Stat(execScript); err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-language-python: missing executor %s: run `make setup` to reinstall the engine\n",
			execScript)
		os.Exit(1)
	}
	host := &pythonHost{exec: execScript, engine: engine, tracing: *tracing}
	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Init: func(srv *grpc.Server) error {
			pulumirpc.RegisterLanguageRuntimeServer(srv, host)
			return nil
		},
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-language-python: could not start the RPC server: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("%d\n", handle.Port)
	if err := <-handle.Done; err != nil {
		fmt.Fprintf(os.Stderr, "pulumi-language-python: %v\n", err)
		os.Exit(1)
	}
}

type pythonHost struct {
	pulumirpc.UnimplementedLanguageRuntimeServer
	exec    string
	engine  string
	tracing string
}

// python returns the interpreter for a program: its `virtualenv` option, $PULUMI_PYTHON_CMD, or python3.
func python(info *pulumirpc.ProgramInfo) string {
	if info != nil && info.GetOptions() != nil {
		if venv, ok := info.GetOptions().AsMap()["virtualenv"].(string); ok && venv != "" {
			if !filepath.IsAbs(venv) {
				venv = filepath.Join(info.GetRootDirectory(), venv)
			}
			return filepath.Join(venv, "bin", "python")
		}
	}
	if cmd := os.Getenv("PULUMI_PYTHON_CMD"); cmd != "" {
		return cmd
	}
	return "python3"
}

func (h *pythonHost) Handshake(
	ctx context.Context, req *pulumirpc.LanguageHandshakeRequest,
) (*pulumirpc.LanguageHandshakeResponse, error) {
	if req.GetEngineAddress() != "" {
		h.engine = req.GetEngineAddress()
	}
	return &pulumirpc.LanguageHandshakeResponse{}, nil
}

func (h *pythonHost) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version.Version}, nil
}

// listPlugins prints one JSON object per installed distribution that declares a Pulumi resource plugin.
const listPlugins = `
import importlib.metadata as md, json
seen = set()
for dist in md.distributions():
    for f in dist.files or ():
        if f.name == "pulumi-plugin.json":
            try:
                meta = json.loads(f.read_text())
            except Exception:
                continue
            if not meta.get("resource"):
                continue
            name = meta.get("name") or dist.metadata["Name"].removeprefix("pulumi_").removeprefix("pulumi-")
            version = meta.get("version") or dist.version
            if (name, version) in seen:
                continue
            seen.add((name, version))
            print(json.dumps({"name": name, "version": version, "server": meta.get("server", "")}))
`

func (h *pythonHost) GetRequiredPackages(
	ctx context.Context, req *pulumirpc.GetRequiredPackagesRequest,
) (*pulumirpc.GetRequiredPackagesResponse, error) {
	cmd := exec.CommandContext(ctx, python(req.GetInfo()), "-c", listPlugins)
	cmd.Dir = req.GetInfo().GetProgramDirectory()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("listing the Python packages' Pulumi plugins failed: %v: %s", err, stderr.String())
	}
	var pkgs []*pulumirpc.PackageDependency
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" {
			continue
		}
		var p struct{ Name, Version, Server string }
		if err := json.Unmarshal([]byte(line), &p); err != nil {
			continue
		}
		v := p.Version
		if v != "" && !strings.HasPrefix(v, "v") {
			v = "v" + v
		}
		pkgs = append(pkgs, &pulumirpc.PackageDependency{Kind: "resource", Name: p.Name, Version: v, Server: p.Server})
	}
	return &pulumirpc.GetRequiredPackagesResponse{Packages: pkgs}, nil
}

func (h *pythonHost) GetRequiredPlugins(
	ctx context.Context, req *pulumirpc.GetRequiredPluginsRequest,
) (*pulumirpc.GetRequiredPluginsResponse, error) {
	resp, err := h.GetRequiredPackages(ctx, &pulumirpc.GetRequiredPackagesRequest{Info: req.GetInfo()})
	if err != nil {
		return nil, err
	}
	plugins := make([]*pulumirpc.PluginDependency, 0, len(resp.GetPackages()))
	for _, p := range resp.GetPackages() {
		plugins = append(plugins, &pulumirpc.PluginDependency{
			Name: p.GetName(), Kind: p.GetKind(), Version: p.GetVersion(), Server: p.GetServer(),
		})
	}
	return &pulumirpc.GetRequiredPluginsResponse{Plugins: plugins}, nil
}

func (h *pythonHost) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	args := []string{"-u", h.exec}
	add := func(k, v string) {
		if v != "" {
			args = append(args, "--"+k, v)
		}
	}
	add("monitor", req.GetMonitorAddress())
	add("engine", h.engine)
	add("project", req.GetProject())
	add("stack", req.GetStack())
	add("pwd", req.GetPwd())
	add("dry_run", fmt.Sprintf("%v", req.GetDryRun()))
	add("parallel", fmt.Sprint(req.GetParallel()))
	add("tracing", h.tracing)
	add("organization", req.GetOrganization())
	add("root_directory", req.GetInfo().GetRootDirectory())
	program := req.GetProgram()
	if entry := req.GetInfo().GetEntryPoint(); entry != "" {
		program = filepath.Join(req.GetInfo().GetProgramDirectory(), entry)
	}
	if program == "" {
		program = "."
	}
	args = append(args, program)
	args = append(args, req.GetArgs()...)

	env := os.Environ()
	if cfg := req.GetConfig(); cfg != nil {
		b, err := json.Marshal(cfg)
		if err != nil {
			return nil, fmt.Errorf("serializing the stack configuration: %w", err)
		}
		env = append(env, "PULUMI_CONFIG="+string(b))
	}
	if keys := req.GetConfigSecretKeys(); keys != nil {
		b, err := json.Marshal(keys)
		if err != nil {
			return nil, fmt.Errorf("serializing the secret config keys: %w", err)
		}
		env = append(env, "PULUMI_CONFIG_SECRET_KEYS="+string(b))
	}

	cmd := exec.Command(python(req.GetInfo()), args...) //nolint:gosec // runs the user's program by design
	cmd.Dir = req.GetPwd()
	cmd.Env = env
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			if exitErr.ExitCode() == exitShownToUser {
				return &pulumirpc.RunResponse{Bail: true}, nil
			}
			return &pulumirpc.RunResponse{
				Error: fmt.Sprintf("Program exited with non-zero exit code: %d", exitErr.ExitCode()),
			}, nil
		}
		return &pulumirpc.RunResponse{
			Error: fmt.Sprintf("could not run the Python interpreter %q: %v", cmd.Path, err),
		}, nil
	}
	return &pulumirpc.RunResponse{}, nil
}

// streamWriter forwards a plugin's output to the engine as RunPluginResponse messages.
type streamWriter struct {
	mu     *sync.Mutex
	server grpc.ServerStreamingServer[pulumirpc.RunPluginResponse]
	stderr bool
}

func (w streamWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	b := append([]byte(nil), p...)
	var msg *pulumirpc.RunPluginResponse
	if w.stderr {
		msg = &pulumirpc.RunPluginResponse{Output: &pulumirpc.RunPluginResponse_Stderr{Stderr: b}}
	} else {
		msg = &pulumirpc.RunPluginResponse{Output: &pulumirpc.RunPluginResponse_Stdout{Stdout: b}}
	}
	if err := w.server.Send(msg); err != nil {
		return 0, err
	}
	return len(p), nil
}

// RunPlugin runs a plugin written in Python (for example a policy pack): `python -u <dir>/<entry point>`.
func (h *pythonHost) RunPlugin(
	req *pulumirpc.RunPluginRequest, server grpc.ServerStreamingServer[pulumirpc.RunPluginResponse],
) error {
	dir := req.GetInfo().GetProgramDirectory()
	if dir == "" {
		dir = req.GetPwd()
	}
	entry := req.GetInfo().GetEntryPoint()
	if entry == "" || entry == "." {
		entry = "__main__.py"
	}
	args := append([]string{"-u", filepath.Join(dir, entry)}, req.GetArgs()...)
	cmd := exec.Command(python(req.GetInfo()), args...) //nolint:gosec // runs the user's plugin by design
	cmd.Dir = req.GetPwd()
	cmd.Env = append(os.Environ(), req.GetEnv()...)
	mu := &sync.Mutex{}
	cmd.Stdout = streamWriter{mu: mu, server: server}
	cmd.Stderr = streamWriter{mu: mu, server: server, stderr: true}
	code := int32(0)
	if err := cmd.Run(); err != nil {
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) {
			return fmt.Errorf("could not run plugin %s: %w", filepath.Join(dir, entry), err)
		}
		code = int32(exitErr.ExitCode()) //nolint:gosec // exit codes fit in int32
	}
	return server.Send(&pulumirpc.RunPluginResponse{Output: &pulumirpc.RunPluginResponse_Exitcode{Exitcode: code}})
}

// InstallDependencies is a no-op: mlinfra's `make setup` installs the project's Python dependencies.
func (h *pythonHost) InstallDependencies(
	req *pulumirpc.InstallDependenciesRequest, server grpc.ServerStreamingServer[pulumirpc.InstallDependenciesResponse],
) error {
	return nil
}

func (h *pythonHost) About(ctx context.Context, req *pulumirpc.AboutRequest) (*pulumirpc.AboutResponse, error) {
	py := python(req.GetInfo())
	out, err := exec.CommandContext(ctx, py, "--version").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("running %s --version: %w", py, err)
	}
	return &pulumirpc.AboutResponse{
		Executable: py,
		Version:    strings.TrimSpace(strings.TrimPrefix(string(out), "Python ")),
	}, nil
}

func (h *pythonHost) GetProgramDependencies(
	ctx context.Context, req *pulumirpc.GetProgramDependenciesRequest,
) (*pulumirpc.GetProgramDependenciesResponse, error) {
	out, err := exec.CommandContext(ctx, python(req.GetInfo()), "-m", "pip", "list", "--format=json").Output()
	if err != nil {
		return &pulumirpc.GetProgramDependenciesResponse{}, nil
	}
	var deps []struct{ Name, Version string }
	if err := json.NewDecoder(io.LimitReader(bytes.NewReader(out), 1<<24)).Decode(&deps); err != nil {
		return &pulumirpc.GetProgramDependenciesResponse{}, nil
	}
	resp := &pulumirpc.GetProgramDependenciesResponse{}
	for _, d := range deps {
		resp.Dependencies = append(resp.Dependencies, &pulumirpc.DependencyInfo{Name: d.Name, Version: d.Version})
	}
	return resp, nil
}
