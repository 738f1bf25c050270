package compose

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/berth-deploy/berth/internal/fakeengine"
)

// TestReadLines: lines as they are, the last one without a newline too,
// and a line longer than the limit cut there with the rest counted.
func TestReadLines(t *testing.T) {
	long := strings.Repeat("x", 40)
	var got []string
	ReadLines(strings.NewReader("a\n\nb\n"+long+"\nc"), 16, func(s string) { got = append(got, s) })
	want := []string{"a", "", "b", strings.Repeat("x", 16) + "…(+24 bytes)", "c"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("lines = %q, want %q", got, want)
	}
}

// TestReadLinesStreams: each line is handed on when it arrives, not
// when the output ends.
func TestReadLinesStreams(t *testing.T) {
	pr, pw := io.Pipe()
	lines := make(chan string)
	go ReadLines(pr, 1024, func(s string) { lines <- s })
	go pw.Write([]byte("migrating\n"))
	if got := <-lines; got != "migrating" {
		t.Errorf("first line = %q", got)
	}
	pw.Close()
}

// TestHookOutputIsBounded: a hook that prints more than hookLines lines
// shows hookLines of them and how many more there were, and a failing
// hook's error carries its last hookTail lines.
func TestHookOutputIsBounded(t *testing.T) {
	eng := newFakeEngine()
	apply(t, eng, plan(t, eng, desired(t, load(t, nil))))
	var out strings.Builder
	n := hookLines + 5
	for i := range n {
		fmt.Fprintf(&out, "line %d\n", i)
	}
	eng.SetDefaultLogs(fakeengine.Output{Stdout: out.String()})
	eng.SetWaitExit(1)
	var progress []string
	exec := &Executor{Engine: eng, Health: &fakeGater{eng: eng}, Release: "2", KeepRetired: true,
		Progress: func(_, msg string) { progress = append(progress, msg) }}
	err := exec.Apply(t.Context(), plan(t, eng, desired(t, load(t, map[string]string{"web": "registry.test/web:v2"}))))
	if !errors.Is(err, ErrHook) {
		t.Fatalf("apply = %v, want a hook failure", err)
	}
	shown := 0
	for _, p := range progress {
		if strings.HasPrefix(p, "| line ") {
			shown++
		}
	}
	if shown != hookLines {
		t.Errorf("%d lines shown, want %d", shown, hookLines)
	}
	if !strings.Contains(strings.Join(progress, "\n"), "| (5 more lines not shown)") {
		t.Errorf("progress does not say 5 lines were not shown")
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("line %d", n-1)) || strings.Contains(err.Error(), fmt.Sprintf("line %d\n", n-hookTail-1)) {
		t.Errorf("error does not end with the last %d lines:\n%s", hookTail, err)
	}
}
