package agent

import (
	"errors"
	"strings"
	"testing"

	"github.com/berth-deploy/berth/agent/config"
)

func TestUndeclared(t *testing.T) {
	pc := config.Project{RequestVariables: []string{"WEB_TAG", "GIT_SHA"}}
	if err := undeclared("shop", pc, map[string]string{"WEB_TAG": "v2"}); err != nil {
		t.Errorf("a listed variable: %v", err)
	}
	err := undeclared("shop", pc, map[string]string{"WEB_TAG": "v2", "UTS": "host", "FOO": "bar"})
	if !errors.Is(err, ErrRequestPolicy) || !strings.Contains(err.Error(), "the request sets FOO, UTS, and project shop lets a request set only WEB_TAG, GIT_SHA: an operator lists the variables a request may set under projects.shop.request_variables") {
		t.Errorf("err = %v", err)
	}
	if strings.Contains(err.Error(), "host") || strings.Contains(err.Error(), "bar") {
		t.Errorf("a value is shown: %v", err)
	}
	if err := undeclared("shop", config.Project{}, map[string]string{"A": "1"}); err == nil || !strings.Contains(err.Error(), "lets a request set none") {
		t.Errorf("none declared: %v", err)
	}
	// Names a caller chose are bounded in the answer.
	env := map[string]string{}
	for i := range 1000 {
		env[strings.Repeat("X", 10000)+string(rune('A'+i%26))+strings.Repeat("Y", i)] = ""
	}
	if err := undeclared("shop", pc, env); err == nil || len(err.Error()) > 1500 || !strings.Contains(err.Error(), "and 990 more") {
		t.Errorf("1000 long names: %d bytes: %.300s", len(err.Error()), err)
	}
}
