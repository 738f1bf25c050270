package agent

import (
	"path/filepath"

	"github.com/compose-spec/compose-go/v2/types"
)

// steadyShippedPaths names, in the project loaded from shipped files, the
// project's directory of shipped files (state_dir/shipped/PROJECT) as its
// working directory, and the main file there as its compose file, rather
// than the directory of this bundle, which is named by the files' content.
// The two go into every container's labels (com.docker.compose.project.
// working_dir, .config_files), and so into its config hash: with the
// bundle's own directory, a commit that changes one service would change
// every service's hash, and every container (the database, the proxy that
// owns the host port) would be recreated; and a dry run, written to a
// directory of its own, would plan to recreate them all. Paths in the file
// (a bind of a shipped file) are resolved when it loads, before this.
func steadyShippedPaths(p *types.Project, src source) {
	if src.shipped == nil {
		return
	}
	root := filepath.Dir(src.dir)
	p.WorkingDir = root
	p.ComposeFiles = []string{filepath.Join(root, filepath.FromSlash(src.shipped.Main))}
}
