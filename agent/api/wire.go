package api

// The API on agentd's unix socket, as agentctl and agentd both speak it.
// Requests and answers are JSON. A deploy or rollback answers 200 with a
// stream of Events, one JSON object a line (MediaEvents), the last one
// the result with the exit code; a command (ssh-command) answers 200 with
// a stream of Frames, the last one with the exit code. Any other answer
// is an Error, whose exit code is the caller's.

// Paths of the API.
const (
	PathDeploy   = "/v1/deploy"   // POST DeployRequest: a stream of Events
	PathRollback = "/v1/rollback" // POST RollbackRequest: a stream of Events
	PathLock     = "/v1/lock"     // POST LockRequest: the Holder (null: none)
	PathCommand  = "/v1/command"  // POST CommandRequest: a stream of Frames
	PathHostKey  = "/v1/host-key" // GET: HostKeyAnswer
	PathStatus   = "/v1/status"   // GET ?project=P (optional): []ProjectStatus
	PathHistory  = "/v1/history"  // GET ?project=P: []Release
)

// MediaEvents is the content type of a stream of Events or Frames: one
// JSON object a line.
const MediaEvents = "application/x-ndjson"

// CommandRequest is a command of the grammar run for an identity by
// `agentctl ssh-command` (OpenSSH forced-command mode).
type CommandRequest struct {
	Identity string   `json:"identity"`
	Args     []string `json:"args"`
	Stdin    []byte   `json:"stdin,omitempty"`
	Remote   string   `json:"remote,omitempty"` // from SSH_CONNECTION, for the audit log
}

// Frame is one piece of a command's output stream; the last frame carries
// the exit code.
type Frame struct {
	Stream   string `json:"stream,omitempty"` // stdout or stderr
	Data     string `json:"data,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
}

// HostKeyAnswer is the SSH server's public host key.
type HostKeyAnswer struct {
	PublicKey string `json:"public_key"` // authorized_keys form
	Port      int    `json:"port"`
}
