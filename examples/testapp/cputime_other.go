//go:build !linux

package main

import "time"

// threadCPU is not available here: spin falls back to wall time.
func threadCPU() (time.Duration, bool) { return 0, false }
