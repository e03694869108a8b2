// composecheck loads compose files the way `docker compose` does (compose-go: the
// compose-spec JSON schema, interpolation, merging, every profile enabled) and prints the
// service names, one per line. There is no Docker engine on the development machines, so
// tests/unit/deploy/test_compose.py runs this instead of `docker compose config`.
//
//	composecheck docker-compose.yml
package main

import (
	"context"
	"fmt"
	"os"
	"sort"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: composecheck FILE...")
		os.Exit(2)
	}
	opts, err := cli.NewProjectOptions(
		os.Args[1:],
		cli.WithName("composecheck"),
		cli.WithProfiles([]string{"*"}),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	names := project.ServiceNames()
	sort.Strings(names)
	for _, name := range names {
		fmt.Println(name)
	}
}
