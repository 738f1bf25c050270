// Package compose turns a Compose file into running containers on one Docker
// engine: it loads the project with compose-go, computes the desired state
// (one container spec per replica, with a config hash), observes what runs
// by the labels `docker compose` uses, makes a pure, printable plan from the
// two, and executes that plan through a narrow Docker interface.
package compose

// Labels that docker compose uses; containers, networks and volumes created
// here carry them so `docker compose -p NAME ps` and `logs` keep working.
const (
	LabelProject    = "com.docker.compose.project"
	LabelService    = "com.docker.compose.service"
	LabelNumber     = "com.docker.compose.container-number"
	LabelConfigHash = "com.docker.compose.config-hash"
	LabelOneoff     = "com.docker.compose.oneoff"
	LabelVersion    = "com.docker.compose.version"
	LabelNetwork    = "com.docker.compose.network"
	LabelVolume     = "com.docker.compose.volume"
	LabelImage      = "com.docker.compose.image"
	LabelWorkingDir = "com.docker.compose.project.working_dir"
	LabelConfigFile = "com.docker.compose.project.config_files"

	// LabelRelease records the Berth release a container was created by.
	LabelRelease = "dev.berth.release"
	// LabelImageRef records the image reference as written (tag form).
	LabelImageRef = "dev.berth.image-ref"

	// composeVersion is what LabelVersion carries: the compose file format
	// generation these containers follow, so docker-compose accepts them.
	composeVersion = "2.0.0"
)
