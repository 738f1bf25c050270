package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"syscall"
)

// stateDirMode is the only mode state_dir may have: it holds the release
// database and the SSH host key, readable by agentd's user alone.
const stateDirMode fs.FileMode = 0o700

// prepareStateDir creates dir (mode 0700) or, when it exists, makes sure
// it is a directory owned by the user agentd runs as, and tightens its
// mode to 0700, saying so in the log with the old mode. A directory owned
// by another user is refused: whoever owns it could replace the database
// or the host key, and chmod by a non-owner fails anyway.
func prepareStateDir(dir string, log *slog.Logger) error {
	st, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, stateDirMode); err != nil {
			return fmt.Errorf("state dir: %w", err)
		}
		st, err = os.Stat(dir)
	}
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("state dir: %s is not a directory", dir)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		if uid := os.Geteuid(); int(sys.Uid) != uid {
			return fmt.Errorf("state dir: %s is owned by uid %d, not by uid %d that agentd runs as: chown it, or point state_dir elsewhere", dir, sys.Uid, uid)
		}
	}
	// The permission bits and setuid, setgid and sticky: 0700 clears them all.
	if old := st.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky); old != stateDirMode {
		if err := os.Chmod(dir, stateDirMode); err != nil {
			return fmt.Errorf("state dir: %w", err)
		}
		log.Warn("state dir tightened", "dir", dir, "old_mode", octal(old), "mode", octal(stateDirMode))
	}
	return nil
}

// octal writes a mode as chmod takes it, e.g. 0755 or 2775.
func octal(m fs.FileMode) string {
	n := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		n |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		n |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		n |= 0o1000
	}
	return fmt.Sprintf("%04o", n)
}
