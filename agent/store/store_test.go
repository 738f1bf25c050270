package store

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/berth-deploy/berth/agent/api"
)

func TestReleasesSurviveReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		r, err := s.Begin(api.Release{Project: "shop", Outcome: api.OutcomeInProgress})
		if err != nil {
			t.Fatal(err)
		}
		if r.Number != i+1 {
			t.Fatalf("release number %d, want %d", r.Number, i+1)
		}
		r.Outcome = api.OutcomeSucceeded
		if i == 3 {
			r.Outcome = api.OutcomeFailed
		}
		if err := s.Save(r, r.Outcome == api.OutcomeSucceeded); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Begin(api.Release{Project: "blog"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cur, ok, err := s.Current("shop")
	if err != nil || !ok || cur.Number != 5 {
		t.Fatalf("current = %d %v %v, want #5", cur.Number, ok, err)
	}
	h, err := s.History("shop")
	if err != nil || len(h) != 5 || h[0].Number != 5 || h[1].Outcome != api.OutcomeFailed {
		t.Fatalf("history = %+v %v", h, err)
	}
	if _, ok, _ := s.Current("nothing"); ok {
		t.Error("unknown project has a current release")
	}
	if _, err := s.Get("shop", 42); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(42) err = %v, want ErrNotFound", err)
	}
}

func TestPruneKeepsCurrentAndNumbers(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := 1; i <= 6; i++ {
		r, _ := s.Begin(api.Release{Project: "shop"})
		if err := s.Save(r, i == 2); err != nil { // #2 stays live, #3..#6 failed
			t.Fatal(err)
		}
	}
	n, err := s.Prune("shop", 3)
	if err != nil || n != 2 {
		t.Fatalf("pruned %d (%v), want 2 (#1 and nothing else but the current kept)", n, err)
	}
	h, _ := s.History("shop")
	var got []int
	for _, r := range h {
		got = append(got, r.Number)
	}
	if len(got) != 4 || got[0] != 6 || got[3] != 2 {
		t.Fatalf("kept %v, want [6 5 4 2]", got)
	}
	r, _ := s.Begin(api.Release{Project: "shop"})
	if r.Number != 7 {
		t.Errorf("next number after prune = %d, want 7", r.Number)
	}
}

func TestHoldAndUnfinished(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if h, err := s.Hold("shop"); err != nil || h != nil {
		t.Fatalf("hold on a new project = %v, %v", h, err)
	}
	if err := s.SetHold("shop", &api.Holder{Identity: "local:alice", Message: "db migration"}); err != nil {
		t.Fatal(err)
	}
	r, _ := s.Begin(api.Release{Project: "shop", Outcome: api.OutcomeInProgress})
	s.Close()

	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if h, _ := s.Hold("shop"); h == nil || h.Message != "db migration" {
		t.Errorf("hold after reopen = %+v", h)
	}
	if u, ok, err := s.Unfinished("shop"); err != nil || !ok || u.Number != r.Number {
		t.Errorf("unfinished = %+v %v %v", u, ok, err)
	}
	r.Outcome = api.OutcomeRolledBack
	s.Save(r, false)
	if _, ok, _ := s.Unfinished("shop"); ok {
		t.Error("a finished release is reported unfinished")
	}
	if err := s.SetHold("shop", nil); err != nil {
		t.Fatal(err)
	}
	if h, _ := s.Hold("shop"); h != nil {
		t.Errorf("hold after unlock = %+v", h)
	}
}
