// compose-check loads a Compose file the way `docker compose config` does (same library, compose-go: schema
// validation, interpolation, normalisation, consistency checks such as unknown depends_on targets or undeclared
// volumes) without needing the Docker compose plugin or an engine.
//
//	compose-check [-q] FILE...
//
// Prints the resolved model as YAML (or nothing with -q); exits 1 with the loader's error otherwise.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

func main() {
	quiet := flag.Bool("q", false, "only validate, print nothing")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: compose-check [-q] FILE...")
		os.Exit(2)
	}
	opts, err := cli.NewProjectOptions(flag.Args(),
		cli.WithOsEnv, cli.WithDotEnv, cli.WithConsistency(true), cli.WithResolvedPaths(true))
	if err == nil {
		var project *types.Project
		project, err = opts.LoadProject(context.Background())
		if err == nil && !*quiet {
			var out []byte
			if out, err = project.MarshalYAML(); err == nil {
				_, err = os.Stdout.Write(out)
			}
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "event=compose_invalid error=%q\n", err.Error())
		os.Exit(1)
	}
}
