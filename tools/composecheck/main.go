// Command composecheck loads a Compose file with compose-go, the library `docker compose`
// itself loads files with, the way `docker compose --env-file ENV config` does: the env
// files, interpolation (so a `${VAR:?message}` whose variable is missing fails), the
// Compose specification's schema (unknown keys, bad `depends_on` conditions) and the
// loader's consistency checks (undefined services, volumes, networks). It exits 1 with the
// loader's message on any error.
//
// Unlike `docker compose config` it never reads the process environment: the env files
// alone define the variables, so the check gives the same answer on every machine. On top
// of the loader it also fails on:
//   - a warning of the loader (e.g. a variable that is not set and defaults to blank);
//   - a variable the Compose file reads that no env file defines, and a variable an env
//     file defines that the Compose file never reads (the env file documents them all);
//   - `depends_on: {X: {condition: service_healthy}}` where X has no healthcheck (which
//     `docker compose up` would only find out at start);
//   - a `build` whose context, Dockerfile or target stage does not exist.
//
// Usage: composecheck [-print | -json] COMPOSE_FILE ENV_FILE...   (or composecheck -version)
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/dotenv"
	"github.com/compose-spec/compose-go/v2/template"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/sirupsen/logrus"
	"go.yaml.in/yaml/v4"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("composecheck", flag.ContinueOnError)
	flags.SetOutput(stderr)
	printConfig := flags.Bool("print", false, "print the resolved configuration, as `docker compose config` does")
	printJSON := flags.Bool("json", false, "print it as JSON, as `docker compose config --format json` does")
	version := flags.Bool("version", false, "print the compose-go version built in, and exit")
	flags.Usage = func() {
		fmt.Fprintln(stderr, "usage: composecheck [-print | -json] COMPOSE_FILE ENV_FILE...")
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if *version {
		fmt.Fprintln(stdout, composeGoVersion())
		return 0
	}
	if flags.NArg() < 2 {
		flags.Usage()
		return 2
	}
	composeFile, envFiles := flags.Arg(0), flags.Args()[1:]

	project, problems := check(context.Background(), composeFile, envFiles)
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintf(stderr, "composecheck: %s: %s\n", composeFile, p)
		}
		return 1
	}
	if *printConfig || *printJSON {
		marshal := project.MarshalYAML
		if *printJSON {
			marshal = project.MarshalJSON
		}
		out, err := marshal()
		if err != nil {
			fmt.Fprintf(stderr, "composecheck: %s: %v\n", composeFile, err)
			return 1
		}
		_, _ = stdout.Write(out)
		return 0
	}
	fmt.Fprintf(stdout, "composecheck: %s OK with %s: services %s; volumes %s\n",
		composeFile, strings.Join(envFiles, ", "),
		strings.Join(project.ServiceNames(), ", "), strings.Join(project.VolumeNames(), ", "))
	return 0
}

// warnings collects what the loader logs at warning level or above.
type warnings struct{ messages []string }

func (w *warnings) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel, logrus.WarnLevel}
}

func (w *warnings) Fire(entry *logrus.Entry) error {
	w.messages = append(w.messages, entry.Message)
	return nil
}

// check loads the project and returns it with every problem found (none: it is fine).
func check(ctx context.Context, composeFile string, envFiles []string) (*types.Project, []string) {
	for _, f := range append([]string{composeFile}, envFiles...) {
		if _, err := os.Stat(f); err != nil {
			return nil, []string{err.Error()}
		}
	}
	absCompose, err := filepath.Abs(composeFile)
	if err != nil {
		return nil, []string{err.Error()}
	}
	logged := &warnings{}
	logrus.SetOutput(io.Discard)
	logrus.AddHook(logged)

	options, err := cli.NewProjectOptions(
		[]string{absCompose},
		cli.WithWorkingDirectory(filepath.Dir(absCompose)),
		cli.WithEnvFiles(envFiles...),
		cli.WithDotEnv, // the env files only: no cli.WithOsEnv
	)
	if err != nil {
		return nil, []string{err.Error()}
	}
	project, err := options.LoadProject(ctx)
	if err != nil {
		message := err.Error()
		if strings.HasSuffix(message, " false schema") { // the schema's additionalProperties: false
			message += " (a key the Compose specification does not define)"
		}
		return nil, append([]string{message}, logged.messages...)
	}
	var problems []string
	problems = append(problems, logged.messages...)
	problems = append(problems, checkVariables(absCompose, envFiles)...)
	problems = append(problems, checkHealthyDependencies(project)...)
	problems = append(problems, checkBuilds(project)...)
	return project, problems
}

// checkVariables compares the variables the Compose file reads with those the env files
// define.
func checkVariables(composeFile string, envFiles []string) []string {
	content, err := os.ReadFile(composeFile)
	if err != nil {
		return []string{err.Error()}
	}
	var model map[string]any
	if err := yaml.Unmarshal(content, &model); err != nil {
		return []string{err.Error()}
	}
	read := template.ExtractVariables(model, template.DefaultPattern)
	defined, err := dotenv.GetEnvFromFile(map[string]string{}, envFiles)
	if err != nil {
		return []string{err.Error()}
	}
	var problems []string
	for _, name := range sortedKeys(read) {
		if _, ok := defined[name]; !ok {
			problems = append(problems, fmt.Sprintf(
				"variable %s is read here but not defined in %s", name, strings.Join(envFiles, ", ")))
		}
	}
	for _, name := range sortedKeys(defined) {
		if _, ok := read[name]; !ok && !strings.HasPrefix(name, "COMPOSE_") {
			problems = append(problems, fmt.Sprintf(
				"variable %s is defined in %s but never read here", name, strings.Join(envFiles, ", ")))
		}
	}
	return problems
}

// checkHealthyDependencies: a `service_healthy` dependency needs a healthcheck to become
// healthy (docker compose up fails with "container ... has no healthcheck configured").
func checkHealthyDependencies(project *types.Project) []string {
	var problems []string
	for _, name := range project.ServiceNames() {
		service := project.Services[name]
		for _, dep := range sortedKeys(service.DependsOn) {
			if service.DependsOn[dep].Condition != types.ServiceConditionHealthy {
				continue
			}
			target, ok := project.Services[dep]
			if !ok {
				continue // the loader reports undefined services
			}
			hc := target.HealthCheck
			if hc == nil || hc.Disable || len(hc.Test) == 0 || hc.Test[0] == "NONE" {
				problems = append(problems, fmt.Sprintf(
					"service %s depends on %s being healthy, but %s has no healthcheck", name, dep, dep))
			}
		}
	}
	return problems
}

var fromLine = regexp.MustCompile(`(?i)^\s*FROM\s+(?:--\S+\s+)*\S+\s+AS\s+(\S+)\s*$`)

// checkBuilds: each local build context exists, with its Dockerfile and target stage.
func checkBuilds(project *types.Project) []string {
	var problems []string
	for _, name := range project.ServiceNames() {
		build := project.Services[name].Build
		if build == nil || build.DockerfileInline != "" || strings.Contains(build.Context, "://") ||
			strings.HasPrefix(build.Context, "git@") {
			continue
		}
		if info, err := os.Stat(build.Context); err != nil || !info.IsDir() {
			problems = append(problems, fmt.Sprintf("service %s: build context %s is not a directory", name, build.Context))
			continue
		}
		dockerfile := build.Dockerfile
		if dockerfile == "" {
			dockerfile = "Dockerfile"
		}
		if !filepath.IsAbs(dockerfile) {
			dockerfile = filepath.Join(build.Context, dockerfile)
		}
		stages, err := stageNames(dockerfile)
		if err != nil {
			problems = append(problems, fmt.Sprintf("service %s: %v", name, err))
			continue
		}
		if build.Target != "" && !slices.Contains(stages, strings.ToLower(build.Target)) {
			problems = append(problems, fmt.Sprintf(
				"service %s: build target %q is not a stage of %s (stages: %s)",
				name, build.Target, dockerfile, strings.Join(stages, ", ")))
		}
	}
	return problems
}

// stageNames lists the named stages (`FROM image AS name`) of a Dockerfile, lower-cased.
func stageNames(dockerfile string) ([]string, error) {
	f, err := os.Open(dockerfile)
	if err != nil {
		var pathErr *os.PathError
		if errors.As(err, &pathErr) {
			return nil, fmt.Errorf("Dockerfile %s: %v", dockerfile, pathErr.Err)
		}
		return nil, err
	}
	defer f.Close()
	var stages []string
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		if m := fromLine.FindStringSubmatch(scanner.Text()); m != nil {
			stages = append(stages, strings.ToLower(m[1]))
		}
	}
	return stages, scanner.Err()
}

// composeGoVersion names the compose-go module this binary was built with.
func composeGoVersion() string {
	info, ok := debug.ReadBuildInfo()
	if ok {
		for _, dep := range info.Deps {
			if dep.Path == "github.com/compose-spec/compose-go/v2" {
				return dep.Path + " " + dep.Version
			}
		}
	}
	return "compose-go (version unknown)"
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
