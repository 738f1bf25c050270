// Package auth holds the identities that may reach agentd from outside the
// host, how each proves itself (SSH keys, GitLab CI ID tokens, HMAC
// secrets, local users through an OpenSSH forced command), and what each
// may do: which projects, which verbs.
package auth

import (
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/berth-deploy/berth/agent/config"
	"golang.org/x/crypto/ssh"
)

// Principal is an authenticated caller.
type Principal struct {
	Identity string // the identity's name
	Method   string // ssh, oidc, hmac, local
	Detail   string // key fingerprint, token subject, local user...
	Remote   string // the peer's address, when there is one
}

// Local is the principal of a local user of the host: the peer of
// agentd's unix socket, as the kernel names it.
func Local(user string) Principal { return Principal{Method: "local", Detail: user} }

// IsLocal reports whether p is a local user of the host rather than an
// identity of the config.
func (p Principal) IsLocal() bool { return p.Method == "local" && p.Identity == "" }

// String is how a principal is recorded in release history and logs.
func (p Principal) String() string {
	if p.IsLocal() {
		return "local:" + p.Detail
	}
	if p.Detail == "" {
		return p.Identity + " (" + p.Method + ")"
	}
	return p.Identity + " (" + p.Method + " " + p.Detail + ")"
}

// Identities is the compiled identities section of the config.
type Identities struct {
	byName map[string]config.Identity
	byKey  map[string]keyGrant // by SHA256 fingerprint
}

type keyGrant struct {
	identity string
	from     string
}

// New compiles the identities of a validated config.
func New(ids []config.Identity) (*Identities, error) {
	out := &Identities{byName: map[string]config.Identity{}, byKey: map[string]keyGrant{}}
	for _, id := range ids {
		out.byName[id.Name] = id
		for _, line := range id.SSHKeys {
			key, from, err := config.ParseKey(line)
			if err != nil {
				return nil, fmt.Errorf("identity %s: %w", id.Name, err)
			}
			out.byKey[ssh.FingerprintSHA256(key)] = keyGrant{identity: id.Name, from: from}
		}
	}
	return out, nil
}

// Get returns an identity by name.
func (ids *Identities) Get(name string) (config.Identity, bool) {
	id, ok := ids.byName[name]
	return id, ok
}

// All returns every identity.
func (ids *Identities) All() []config.Identity {
	out := make([]config.Identity, 0, len(ids.byName))
	for _, id := range ids.byName {
		out = append(out, id)
	}
	slices.SortFunc(out, func(a, b config.Identity) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// ByKey returns the identity an SSH public key belongs to, and the from=
// patterns the key is limited to ("" for none).
func (ids *Identities) ByKey(key ssh.PublicKey) (identity, from string, ok bool) {
	g, ok := ids.byKey[ssh.FingerprintSHA256(key)]
	return g.identity, g.from, ok
}

// Allowed reports whether identity may use verb on project. An empty
// project is allowed only for status (of every project, filtered down to
// those the identity may see): any other verb names a project, and one
// that names "" is out of every scope.
func (ids *Identities) Allowed(identity, project, verb string) bool {
	id, ok := ids.byName[identity]
	if !ok {
		return false
	}
	verbOK := slices.Contains(id.Verbs, "*") || slices.Contains(id.Verbs, verb)
	projectOK := project == "" && verb == "status" ||
		project != "" && (slices.Contains(id.Projects, "*") || slices.Contains(id.Projects, project))
	return verbOK && projectOK
}

// MayShip reports whether identity may send a deploy's compose file with
// the request (its ship_compose).
func (ids *Identities) MayShip(identity string) bool {
	id, ok := ids.byName[identity]
	return ok && id.ShipCompose
}

// Projects filters names down to the projects identity may see.
func (ids *Identities) Projects(identity string, names []string) []string {
	var out []string
	for _, n := range names {
		if ids.Allowed(identity, n, "status") {
			out = append(out, n)
		}
	}
	return out
}

// LocalUserMay reports whether a host user may act as identity through
// `agentctl ssh-command`.
func (ids *Identities) LocalUserMay(identity, user string) bool {
	id, ok := ids.byName[identity]
	return ok && slices.Contains(id.LocalUsers, user)
}

// MatchFrom reports whether a remote address matches OpenSSH from=
// patterns: comma-separated host/IP wildcards and CIDR blocks, with "!"
// negation. Host names are not resolved: only addresses match.
func MatchFrom(patterns string, remote net.Addr) bool {
	host, _, err := net.SplitHostPort(remote.String())
	if err != nil {
		host = remote.String()
	}
	ip := net.ParseIP(host)
	matched := false
	for _, p := range strings.Split(patterns, ",") {
		p = strings.TrimSpace(p)
		neg := strings.HasPrefix(p, "!")
		p = strings.TrimPrefix(p, "!")
		var hit bool
		if _, cidr, err := net.ParseCIDR(p); err == nil {
			hit = ip != nil && cidr.Contains(ip)
		} else {
			hit = wildcard(p, host)
		}
		if hit && neg {
			return false
		}
		matched = matched || hit
	}
	return matched
}

// wildcard matches OpenSSH patterns: * any run, ? one character.
func wildcard(pattern, s string) bool {
	if pattern == "" {
		return s == ""
	}
	switch pattern[0] {
	case '*':
		for i := 0; i <= len(s); i++ {
			if wildcard(pattern[1:], s[i:]) {
				return true
			}
		}
		return false
	case '?':
		return s != "" && wildcard(pattern[1:], s[1:])
	default:
		return s != "" && s[0] == pattern[0] && wildcard(pattern[1:], s[1:])
	}
}
