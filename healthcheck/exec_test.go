package healthcheck

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-deploy/berth/internal/fakeengine"
)

func TestExec(t *testing.T) {
	f := newWeb(t)
	f.SetExecResults(fakeengine.ExecResult{Stdout: "syntax is ok\n", Stderr: "test is successful\n", ExitCode: 0}, fakeengine.ExecResult{Stderr: "emerg: unknown directive\n", ExitCode: 1})
	code, out, err := Exec(t.Context(), f, webID, []string{"nginx", "-t"})
	if err != nil || code != 0 || out != "syntax is ok\ntest is successful\n" {
		t.Fatalf("Exec = %d, %q, %v", code, out, err)
	}
	if !slices.Equal(f.Execs()[0].Opts.Cmd, []string{"nginx", "-t"}) {
		t.Errorf("ran %v", f.Execs()[0].Opts.Cmd)
	}
	code, out, err = Exec(t.Context(), f, webID, []string{"nginx", "-t"})
	if err != nil || code != 1 || out != "emerg: unknown directive\n" {
		t.Fatalf("Exec = %d, %q, %v; want exit code 1 and no error", code, out, err)
	}
}

func TestExecKeepsTheEndOfLongOutput(t *testing.T) {
	f := newWeb(t)
	long := strings.Repeat("x", 100<<10) + "the end\n"
	f.SetExecResults(fakeengine.ExecResult{Stdout: long})
	_, out, err := Exec(t.Context(), f, webID, []string{"cat", "big"})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != execOutputMax || !strings.HasSuffix(out, "the end\n") {
		t.Errorf("kept %d bytes ending %q, want %d ending with the end", len(out), out[max(0, len(out)-10):], execOutputMax)
	}
}

func TestExecErrors(t *testing.T) {
	f := newWeb(t)
	f.SetExecResults(fakeengine.ExecResult{})
	if _, _, err := Exec(t.Context(), f, "nope", []string{"true"}); err == nil || !strings.HasPrefix(err.Error(), `exec "true" in nope: create:`) {
		t.Errorf("unknown container: error = %v", err)
	}
	if _, _, err := Exec(t.Context(), f, webID, nil); err == nil {
		t.Error("empty command: no error")
	}
}

func TestExecContextCancelled(t *testing.T) {
	f := newWeb(t)
	f.SetExecResults(fakeengine.ExecResult{Stdout: "working\n", Hang: true})
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, out, err := Exec(ctx, f, webID, []string{"sleep", "infinity"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error = %v, want context.DeadlineExceeded", err)
	}
	if out != "working\n" {
		t.Errorf("output = %q, want what came before the deadline", out)
	}
	wantQuick(t, time.Since(start), time.Second)
}

func TestTailBuffer(t *testing.T) {
	b := &tailBuffer{max: 10}
	for i := range 100 {
		b.Write([]byte{byte('a' + i%26)})
		if len(b.buf) > 2*b.max {
			t.Fatalf("buffer grew to %d", len(b.buf))
		}
	}
	if got := b.String(); got != "mnopqrstuv" {
		t.Errorf("String = %q", got)
	}
	b.Write([]byte("0123456789abcdef"))
	if got := b.String(); got != "6789abcdef" {
		t.Errorf("String = %q", got)
	}
}
