// Package api holds what the front doors and the deploy service share: the
// exit codes CI relies on, the requests of the command grammar, the events
// a deploy streams, and the records it keeps.
package api

import (
	"encoding/json"
	"time"
)

// Exit codes, as DESIGN.md fixes them.
const (
	ExitOK         = 0 // the new release is live and healthy
	ExitRolledBack = 1 // the deploy failed and the previous release is serving
	ExitBadRequest = 2 // bad request, config or compose file: nothing changed
	ExitLocked     = 3 // the project is locked or another deploy is running
	ExitDenied     = 4 // not authenticated or not allowed
	ExitBroken     = 5 // the deploy failed and nothing restored it: operator needed
)

// DeployRequest asks for a new release of a project.
type DeployRequest struct {
	Project string            `json:"project"`
	Images  map[string]string `json:"images,omitempty"` // service -> image reference
	Message string            `json:"message,omitempty"`
	// Wait is how long to wait for the project's lock (0: refuse at once).
	Wait time.Duration `json:"wait,omitempty"`
	// Timeout bounds the rollout; when it passes the release is rolled back.
	Timeout time.Duration `json:"timeout,omitempty"`
	// Env are variables for the compose file's interpolation, over the
	// project's env file. They are secrets: never logged; their values are
	// redacted from the recorded compose file.
	Env map[string]string `json:"env,omitempty"`
	// Registry is a credential for this request's pulls only.
	Registry *RegistryAuth `json:"registry,omitempty"`
	// Compose, when set, is the project's compose file shipped with the
	// request (from the repository), deployed instead of the host's; only
	// an identity with ship_compose may send one, and the project's policy
	// decides what it may contain.
	Compose *ComposeBundle `json:"compose,omitempty"`
	// Source names what the release was built from, for the record (a
	// commit: $CI_COMMIT_SHA).
	Source string `json:"source,omitempty"`
	// DryRun loads and checks the request, resolves the images and shows
	// the plan, and changes nothing (no lock, no record).
	DryRun bool `json:"dry_run,omitempty"`
}

// ComposeBundle is a compose file shipped with a deploy request, with the
// files it includes or extends.
type ComposeBundle struct {
	// Files maps each file's path, relative to the bundle's root
	// (slash-separated, never absolute, never through ".."), to its
	// content.
	Files map[string]string `json:"files"`
	// Main is the path of the compose file itself; empty means the first
	// of compose.yaml, compose.yml, docker-compose.yaml and
	// docker-compose.yml found at the root.
	Main string `json:"main,omitempty"`
}

// RegistryAuth is a registry credential supplied with a request (a GitLab
// job's CI_REGISTRY, CI_REGISTRY_USER and CI_JOB_TOKEN, say).
type RegistryAuth struct {
	Server   string `json:"server"`
	Username string `json:"username"`
	Password string `json:"password"`
}

// RollbackRequest asks to redeploy a recorded release.
type RollbackRequest struct {
	Project string        `json:"project"`
	To      int           `json:"to,omitempty"` // 0: the previous good release
	Message string        `json:"message,omitempty"`
	Wait    time.Duration `json:"wait,omitempty"`
	Timeout time.Duration `json:"timeout,omitempty"`
}

// LockRequest holds (or, with Unlock, releases) a project's deploys.
type LockRequest struct {
	Project string `json:"project"`
	Message string `json:"message,omitempty"`
	Unlock  bool   `json:"unlock,omitempty"`
}

// Event types of a deploy stream.
const (
	EventProgress = "progress" // something is happening
	EventPlan     = "plan"     // the plan, as text
	EventResult   = "result"   // the last event: carries the exit code
	EventStep     = "step"     // a step of the rollout ended: carries it
)

// Event is one line of a deploy's progress stream (NDJSON on the wire).
type Event struct {
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Project string    `json:"project,omitempty"`
	Release int       `json:"release,omitempty"`
	Service string    `json:"service,omitempty"`
	Message string    `json:"message"`
	// ExitCode is set on the result event only.
	ExitCode *int `json:"exit_code,omitempty"`
	// Step is set on step events only: the step, how it ended, when it
	// began and how long it took.
	Step *Step `json:"step,omitempty"`
}

// Release outcomes.
const (
	OutcomeInProgress = "in-progress" // under way (or agentd died: recovery decides)
	OutcomeSucceeded  = "succeeded"   // live and healthy, committed
	OutcomeRolledBack = "rolled-back" // failed; the previous release was restored
	OutcomeFailed     = "failed"      // failed and not restored: operator needed
)

// Release kinds.
const (
	KindDeploy   = "deploy"
	KindRollback = "rollback"
)

// Release is the record of one deploy that changed something.
type Release struct {
	Project  string                  `json:"project"`
	Number   int                     `json:"number"`
	Previous int                     `json:"previous,omitempty"` // the release it replaced
	Started  time.Time               `json:"started"`
	Finished time.Time               `json:"finished,omitzero"`
	Identity string                  `json:"identity"`
	Message  string                  `json:"message,omitempty"`
	Outcome  string                  `json:"outcome"`
	Error    string                  `json:"error,omitempty"`
	Services map[string]ServiceImage `json:"services"`
	Compose  string                  `json:"compose"` // the compose file as deployed (images pinned)
	Plan     string                  `json:"plan"`
	Kind     string                  `json:"kind"`
	// Shipped holds the compose files the release ran when they came with
	// a request rather than from the host (verbatim, as sent: they hold no
	// secrets, which come from the host's env file), or nil.
	Shipped *ComposeBundle `json:"shipped,omitempty"`
	// Source is what the caller said the release was built from (a
	// commit: --source $CI_COMMIT_SHA).
	Source string `json:"source,omitempty"`
	// RollbackOf is the release a rollback redeployed.
	RollbackOf int `json:"rollback_of,omitempty"`
	// RestoredTo is the release that was put back when this one failed.
	RestoredTo int `json:"restored_to,omitempty"`
	// KilledOnStop lists the containers the release stopped that had not
	// exited at the end of their grace period, so the engine killed them.
	KilledOnStop []StopKilled `json:"killed_on_stop,omitempty"`
	// Interrupted: agentd stopped (crashed, was killed) during the
	// release, and recovery, when it started again, finished it: rolled
	// back to RestoredTo (the outcome says whether that worked).
	Interrupted bool `json:"interrupted,omitempty"`
	// Steps is the release's rollout as a graph of steps (the journal
	// holds them before the first change), with how each one ended and
	// how long it took. A rollback after a failure is not among them.
	Steps []Step `json:"steps,omitempty"`
	// State is the desired state the release deployed, exactly as sent to
	// the engine: what a rollback to it redeploys. Not sent by history.
	State json.RawMessage `json:"state,omitempty"`
}

// Step is one step of a release's rollout: what it did, which steps it
// waited for, and how it ended (pending while the release runs, then
// done, failed or skipped).
type Step struct {
	ID      int       `json:"id"`
	Kind    string    `json:"kind"`
	Service string    `json:"service,omitempty"`
	Target  string    `json:"target,omitempty"`
	After   []int     `json:"after,omitempty"`
	State   string    `json:"state"`
	Started time.Time `json:"started,omitzero"`
	Seconds float64   `json:"seconds,omitempty"`
	Error   string    `json:"error,omitempty"`
}

// When a container was stopped, in a release's life.
const (
	StopDuringRollout  = "rollout"  // the release's own rollout
	StopDuringRollback = "rollback" // putting the previous release back after a failure
	StopDuringUndo     = "undo"     // undoing a failed first release
	StopDuringCleanup  = "cleanup"  // removing what a committed release retired
)

// StopKilled is a container a release stopped that was still running when
// its grace period (stop_grace_period) ended after its stop signal, so
// the engine killed it with SIGKILL (exit code 137): whatever it was doing
// was cut short.
type StopKilled struct {
	Service   string `json:"service"`
	Container string `json:"container"`
	// Signal is the stop signal it did not exit on (SIGTERM by default).
	Signal string `json:"signal"`
	// GracePeriod is how long the engine waited for it, in seconds.
	GracePeriod float64 `json:"grace_period_seconds"`
	// StoppedAfter is how long the stop took, in seconds.
	StoppedAfter float64 `json:"stopped_after_seconds"`
	// During is one of the StopDuring values.
	During string `json:"during"`
}

// ServiceImage is the image a service ran in a release.
type ServiceImage struct {
	Ref    string `json:"ref"`    // as requested
	Pinned string `json:"pinned"` // what ran: repository@digest or image ID
	Digest string `json:"digest"`
}

// ProjectStatus is what `status` reports for a project.
type ProjectStatus struct {
	Project  string          `json:"project"`
	Current  *Release        `json:"current,omitempty"`
	Services []ServiceStatus `json:"services"`
	// Deploying names the holder of the deploy lock, if any.
	Deploying *Holder `json:"deploying,omitempty"`
	// Locked names the operator who holds the project's deploys, if any.
	Locked *Holder `json:"locked,omitempty"`
}

// ServiceStatus lists the containers of a service (one engine), or its
// tasks (a Swarm).
type ServiceStatus struct {
	Name       string            `json:"name"`
	Containers []ContainerStatus `json:"containers"`
	// On a Swarm: the service's mode, replicas running of wanted, the
	// state of its last update, and its tasks on the nodes.
	Swarm *SwarmService `json:"swarm,omitempty"`
}

// SwarmService is a stack service as the Swarm reports it.
type SwarmService struct {
	Image         string       `json:"image"`
	Mode          string       `json:"mode"` // replicated or global
	Replicas      int          `json:"replicas"`
	Running       int          `json:"running"`
	UpdateState   string       `json:"update_state,omitempty"`
	UpdateMessage string       `json:"update_message,omitempty"`
	Release       string       `json:"release,omitempty"`
	Tasks         []TaskStatus `json:"tasks"`
}

// TaskStatus is one task of a Swarm service.
type TaskStatus struct {
	ID           string    `json:"id"`
	Node         string    `json:"node"` // the node's hostname
	Slot         int       `json:"slot,omitempty"`
	State        string    `json:"state"`
	DesiredState string    `json:"desired_state"`
	Health       string    `json:"health,omitempty"`
	Error        string    `json:"error,omitempty"`
	Image        string    `json:"image"`
	Release      string    `json:"release,omitempty"`
	Since        time.Time `json:"since,omitzero"`
}

// ContainerStatus is one container as the engine reports it.
type ContainerStatus struct {
	Name    string `json:"name"`
	ID      string `json:"id"`
	Image   string `json:"image"`
	State   string `json:"state"`
	Status  string `json:"status"` // the engine's words, e.g. "Up 3 minutes (healthy)"
	Release string `json:"release,omitempty"`
}

// Holder says who holds a project's deploy lock.
type Holder struct {
	Identity string    `json:"identity"`
	Since    time.Time `json:"since"`
	Verb     string    `json:"verb"`
	Message  string    `json:"message,omitempty"`
}

// Error is the body of a refused request.
type Error struct {
	Message  string `json:"error"`
	ExitCode int    `json:"exit_code"`
}

// Run outcomes, as observers see them.
const (
	RunSucceeded  = "succeeded"   // a new release is live
	RunNoop       = "noop"        // nothing to change
	RunRolledBack = "rolled-back" // failed; the previous release is serving
	RunFailed     = "failed"      // failed and not restored
	RunRefused    = "refused"     // bad request, locked or denied: nothing changed
)

// RunEvent is what observers (metrics, notifications) are told when a
// deploy or rollback request ends.
type RunEvent struct {
	Project  string        `json:"project"`
	Kind     string        `json:"kind"` // deploy or rollback
	Outcome  string        `json:"outcome"`
	ExitCode int           `json:"exit_code"`
	Duration time.Duration `json:"duration"`
	Identity string        `json:"identity"`
	Message  string        `json:"message"` // the result's words
	// Release is the record, when one was made (Number 0 otherwise),
	// without its recorded state.
	Release Release `json:"release"`
	// Live is the project's live release after the run (0: none).
	Live int       `json:"live"`
	Time time.Time `json:"time"`
}

// UnhealthyEvent is what the watch job reports of a live container.
type UnhealthyEvent struct {
	Project   string    `json:"project"`
	Release   int       `json:"release"`
	Service   string    `json:"service"`
	Container string    `json:"container"`
	State     string    `json:"state"`  // the engine's state: running, restarting, exited...
	Health    string    `json:"health"` // healthy, unhealthy, starting, or ""
	Restarts  int       `json:"restarts"`
	Detail    string    `json:"detail"` // what is wrong, in words
	Time      time.Time `json:"time"`
}
