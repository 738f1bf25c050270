package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// Errors of ReadWithin.
var (
	// ErrInputTooLarge: more than the limit arrived.
	ErrInputTooLarge = errors.New("too much on standard input")
	// ErrInputStillOpen: the input did not end in time.
	ErrInputStillOpen = errors.New("standard input still open")
)

// ReadWithin reads r to its end, at most max bytes, and within d: a
// caller that keeps its input open past d is not waited for. The read
// goes on in the background until r ends (an SSH channel ends with its
// session; agentctl exits right after).
func ReadWithin(ctx context.Context, r io.Reader, d time.Duration, max int64) ([]byte, error) {
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		data, err := io.ReadAll(io.LimitReader(r, max+1))
		done <- result{data, err}
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case res := <-done:
		switch {
		case res.err != nil:
			return nil, fmt.Errorf("read standard input: %w", res.err)
		case int64(len(res.data)) > max:
			return nil, fmt.Errorf("%w: more than %d bytes", ErrInputTooLarge, max)
		}
		return res.data, nil
	case <-t.C:
		return nil, fmt.Errorf("%w after %s", ErrInputStillOpen, d)
	case <-ctx.Done():
		return nil, fmt.Errorf("read standard input: %w", ctx.Err())
	}
}
