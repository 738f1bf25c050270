package api

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// TestReadWithin: the input as it came, more than the limit refused, and
// an input that never ends not waited for past the deadline.
func TestReadWithin(t *testing.T) {
	got, err := ReadWithin(t.Context(), strings.NewReader("A=1\n"), time.Second, 4)
	if err != nil || string(got) != "A=1\n" {
		t.Errorf("4 bytes, limit 4: %q, %v", got, err)
	}
	if _, err := ReadWithin(t.Context(), strings.NewReader("A=12\n"), time.Second, 4); !errors.Is(err, ErrInputTooLarge) {
		t.Errorf("5 bytes, limit 4: %v, want ErrInputTooLarge", err)
	}
	pr, pw := io.Pipe()
	defer pw.Close()
	start := time.Now()
	if _, err := ReadWithin(t.Context(), pr, 100*time.Millisecond, 4); !errors.Is(err, ErrInputStillOpen) {
		t.Errorf("input held open: %v, want ErrInputStillOpen", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("input held open: answered after %s, want about 100ms", d)
	}
}
