package auth

import (
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"testing"

	"github.com/berth-deploy/berth/agent/config"
	"golang.org/x/crypto/ssh"
)

func newKey(t *testing.T) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestScopesAndKeys(t *testing.T) {
	a, b := newKey(t), newKey(t)
	ids, err := New([]config.Identity{
		{Name: "ci-shop", SSHKeys: []string{`from="10.0.0.0/8,!10.9.9.9" ` + string(ssh.MarshalAuthorizedKey(a))}, Projects: []string{"shop"}, Verbs: []string{"deploy", "status"}, LocalUsers: []string{"deploy"}},
		{Name: "ops", SSHKeys: []string{string(ssh.MarshalAuthorizedKey(b))}, Projects: []string{"*"}, Verbs: []string{"*"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if id, from, ok := ids.ByKey(a); !ok || id != "ci-shop" || from != "10.0.0.0/8,!10.9.9.9" {
		t.Errorf("ByKey(a) = %q %q %v", id, from, ok)
	}
	if _, _, ok := ids.ByKey(newKey(t)); ok {
		t.Error("an unknown key was found")
	}
	for _, tc := range []struct {
		id, project, verb string
		want              bool
	}{
		{"ci-shop", "shop", "deploy", true},
		{"ci-shop", "blog", "deploy", false},
		{"ci-shop", "shop", "rollback", false},
		{"ci-shop", "", "status", true},
		// An empty project is no way around the scopes (deploy '').
		{"ci-shop", "", "deploy", false},
		{"ops", "", "deploy", false},
		{"ops", "", "history", false},
		{"ops", "blog", "unlock", true},
		{"nobody", "shop", "status", false},
	} {
		if got := ids.Allowed(tc.id, tc.project, tc.verb); got != tc.want {
			t.Errorf("Allowed(%s, %s, %s) = %v", tc.id, tc.project, tc.verb, got)
		}
	}
	if !ids.LocalUserMay("ci-shop", "deploy") || ids.LocalUserMay("ci-shop", "alice") || ids.LocalUserMay("ops", "deploy") {
		t.Error("LocalUserMay is wrong")
	}
}

func TestMatchFrom(t *testing.T) {
	addr := func(s string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(s), Port: 50000} }
	for _, tc := range []struct {
		patterns, ip string
		want         bool
	}{
		{"10.0.0.0/8", "10.1.2.3", true},
		{"10.0.0.0/8", "192.168.1.1", false},
		{"10.0.0.0/8,!10.9.9.9", "10.9.9.9", false},
		{"127.0.0.*", "127.0.0.1", true},
		{"127.0.0.?", "127.0.0.12", false},
		{"192.0.2.1,127.0.0.1", "127.0.0.1", true},
		{"!127.0.0.1", "127.0.0.1", false},
	} {
		if got := MatchFrom(tc.patterns, addr(tc.ip)); got != tc.want {
			t.Errorf("MatchFrom(%q, %s) = %v", tc.patterns, tc.ip, got)
		}
	}
}

func TestMayShip(t *testing.T) {
	ids, err := New([]config.Identity{
		{Name: "ci", LocalUsers: []string{"root"}, Projects: []string{"shop"}, Verbs: []string{"deploy"}, ShipCompose: true},
		{Name: "ops", LocalUsers: []string{"root"}, Projects: []string{"*"}, Verbs: []string{"*"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !ids.MayShip("ci") || ids.MayShip("ops") || ids.MayShip("nobody") || ids.MayShip("") {
		t.Errorf("MayShip: ci %v, ops %v, nobody %v, empty %v; want true, false, false, false",
			ids.MayShip("ci"), ids.MayShip("ops"), ids.MayShip("nobody"), ids.MayShip(""))
	}
}

// A local user is a principal of method local without an identity; an
// identity never is one, whatever its method says.
func TestLocal(t *testing.T) {
	for _, tc := range []struct {
		p     Principal
		local bool
		str   string
	}{
		{Local("alice"), true, "local:alice"},
		{Principal{Identity: "ops", Method: "local", Detail: "alice"}, false, "ops (local alice)"},
		{Principal{Identity: "ci", Method: "ssh-command", Detail: "local:deploy"}, false, "ci (ssh-command local:deploy)"},
		{Principal{}, false, " ()"},
	} {
		if tc.p.IsLocal() != tc.local || tc.p.String() != tc.str {
			t.Errorf("%+v: IsLocal %v, String %q; want %v, %q", tc.p, tc.p.IsLocal(), tc.p.String(), tc.local, tc.str)
		}
	}
}
